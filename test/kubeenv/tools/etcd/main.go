// Command etcd is etcd's server (go.etcd.io/etcd/server/v3/etcdmain), built
// here so that the injector's tests need no etcd release download.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
