// Command etcd is the etcd server, pinned at v3.6.14 by this module's go.mod.
//
// etcd's own main package lives in its root module, which replaces its server/client modules
// with local paths; a consumer cannot build it from the proxy, so this calls the same entry point.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
