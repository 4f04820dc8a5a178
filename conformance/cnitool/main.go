// cnitool is a small runtime over the real libcni (Debian's golang-github-appc-cni-dev), the
// way the upstream cnitool drives plugins: it loads a network configuration list by name from
// NETCONFPATH and runs ADD, CHECK or DEL of it for a network namespace, with libcni's result
// cache, prevResult chaining and version conversion. The conformance suite uses it to show
// that the plugins work under libcni itself, not only under our own driver.
//
//	cnitool add|check|del <network name> <netns path>
//
// Environment: NETCONFPATH (default /etc/cni/net.d), CNI_PATH (plugin directories),
// CNI_IFNAME (default eth0), CNI_CONTAINERID (default derived from the netns path),
// CNI_ARGS (K=V;K=V), CAP_ARGS (JSON capability arguments), CNI_CACHE_DIR.
package main

import (
	"context"
	"crypto/sha512"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

func fail(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "cnitool: "+format+"\n", a...)
	os.Exit(1)
}

func getenv(key, fallback string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return fallback
}

func main() {
	if len(os.Args) != 4 {
		fail("usage: cnitool add|check|del <network name> <netns path>")
	}
	verb, name, netns := os.Args[1], os.Args[2], os.Args[3]

	list, err := libcni.LoadConfList(getenv("NETCONFPATH", "/etc/cni/net.d"), name)
	if err != nil {
		fail("load network %q: %v", name, err)
	}

	var capArgs map[string]interface{}
	if s := os.Getenv("CAP_ARGS"); s != "" {
		if err := json.Unmarshal([]byte(s), &capArgs); err != nil {
			fail("parse CAP_ARGS: %v", err)
		}
	}
	var cniArgs [][2]string
	if s := os.Getenv("CNI_ARGS"); s != "" {
		for _, pair := range strings.Split(s, ";") {
			kv := strings.SplitN(pair, "=", 2)
			if len(kv) != 2 {
				fail("invalid CNI_ARGS pair %q", pair)
			}
			cniArgs = append(cniArgs, [2]string{kv[0], kv[1]})
		}
	}
	id := os.Getenv("CNI_CONTAINERID")
	if id == "" {
		// As upstream cnitool does: one stable ID per namespace path.
		id = fmt.Sprintf("cnitool-%x", sha512.Sum512([]byte(netns)))[:28]
	}
	rt := &libcni.RuntimeConf{
		ContainerID:    id,
		NetNS:          netns,
		IfName:         getenv("CNI_IFNAME", "eth0"),
		Args:           cniArgs,
		CapabilityArgs: capArgs,
	}
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(os.Getenv("CNI_PATH")), os.Getenv("CNI_CACHE_DIR"), nil)
	ctx := context.Background()

	switch verb {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		report(err)
		if result != nil {
			_ = result.Print()
			fmt.Println()
		}
	case "check":
		report(cni.CheckNetworkList(ctx, list, rt))
	case "del":
		report(cni.DelNetworkList(ctx, list, rt))
	default:
		fail("unknown command %q (libcni %s has add, check and del)", verb, "1.1")
	}
}

// report prints a plugin's error object as JSON on stderr and exits non-zero.
func report(err error) {
	if err == nil {
		return
	}
	if e, ok := err.(*types.Error); ok {
		b, _ := json.Marshal(e)
		fmt.Fprintf(os.Stderr, "%s\n", b)
		os.Exit(2)
	}
	fail("%v", err)
}
