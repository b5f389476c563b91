// Command vmimage builds an immutd golden VM image from a local bundle
// (see internal/vmimage): `make vm-images` runs it for the sample app.
//
//	vmimage -kernel-dir DIR -busybox /bin/busybox -init bin/vminit \
//	        -bundle build/images/sampleapp-v1 [-disk-size 1048576] -out DIR
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/immutd/immutd/internal/vmimage"
)

func main() {
	var o vmimage.Options
	flag.StringVar(&o.KernelDir, "kernel-dir", "", "root of a Debian linux-image package's files (dpkg-deb -x)")
	flag.StringVar(&o.Busybox, "busybox", "/bin/busybox", "a static busybox (Debian's busybox-static)")
	flag.StringVar(&o.Init, "init", "", "the guest init, a static cmd/vminit binary")
	flag.StringVar(&o.Bundle, "bundle", "", "the local bundle to put at /app")
	flag.Int64Var(&o.DiskSize, "disk-size", 0, "bytes of root disk to add (0: none)")
	flag.StringVar(&o.Out, "out", "", "the image directory to make (must not exist)")
	flag.Parse()
	m, err := vmimage.Build(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("vmimage: %s %s (kernel %s) in %s\n", m.Name, m.Version, m.KernelRelease, o.Out)
}
