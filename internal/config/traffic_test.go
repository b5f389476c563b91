package config

import (
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

func TestTrafficAndConsulCheckDecode(t *testing.T) {
	src := `fleet "web" {
  size     = 2
  provider = "docker"
  image    = "nginx:1.27"
  health {
    tcp "port" {}
    consul "catalog" {
      address    = "https://consul.example:8501"
      token_file = "/etc/immutd/consul-token"
      ca_file    = "/etc/immutd/consul-ca.pem"
    }
  }
  traffic {
    drain_delay = "5s"
    file "targets" {
      path = "../targets/web.json"
    }
    haproxy "edge" {
      socket  = "/run/haproxy/admin.sock"
      backend = "web"
      check   = true
    }
  }
}
`
	dir := t.TempDir()
	set, err := ParseFleetFiles(filepath.Join(dir, "fleets.d"), []File{{Name: "web.hcl", Content: []byte(src)}})
	if err != nil {
		t.Fatal(err)
	}
	f := set.Fleets[0]
	want := &Traffic{MinReady: DefaultMinReady, DrainDelay: 5 * time.Second, KeepMin: DefaultKeepMin, BackendTimeout: DefaultBackendTimeout,
		Files:   []TrafficFile{{Name: "targets", Path: filepath.Join(dir, "targets", "web.json")}},
		HAProxy: []TrafficHAProxy{{Name: "edge", Socket: "/run/haproxy/admin.sock", Backend: "web", Check: true}}}
	if !reflect.DeepEqual(f.Traffic, want) {
		t.Errorf("traffic\n got %+v\nwant %+v", f.Traffic, want)
	}
	cc := f.Health.Checks[1]
	wantCheck := &ConsulCheck{Address: "https://consul.example:8501", TokenFile: "/etc/immutd/consul-token", CAFile: "/etc/immutd/consul-ca.pem"}
	if cc.Kind != checkConsul || !reflect.DeepEqual(cc.Consul, wantCheck) || cc.Interval != DefaultCheckInterval {
		t.Errorf("consul check %+v (consul %+v)", cc, cc.Consul)
	}
	if f.Health.Checks[0].Consul != nil {
		t.Errorf("tcp check has consul settings: %+v", f.Health.Checks[0].Consul)
	}
}
