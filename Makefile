# immutd — run `make help` for the targets.

SHELL       := /bin/bash
GO          ?= go
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION    ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS     := -X github.com/immutd/immutd/internal/agent.Version=$(VERSION) -X github.com/immutd/immutd/internal/agent.Revision=$(REVISION)
PREFIX      ?= /usr/local
BIN         := bin/immutd
IMAGES      := build/images/sampleapp-v1 build/images/sampleapp-v2
GOFILES     := $(shell find . -name '*.go' -not -path './build/*' -not -path './run/*' 2>/dev/null)
# The go test timeout for the whole suite; make test stays well below it.
TEST_TIMEOUT ?= 18m

.PHONY: help build images docker-images vm-images run run-vm test test-short e2e integ-consul bench lint install clean deb

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

SIMHOST     := bin/immutd-simhost

build: $(BIN) $(SIMHOST) images ## build immutd, the sim provider's host (a benchmark tool) and the sample app images

$(BIN): $(GOFILES) go.mod go.sum
	@mkdir -p bin
	@[ -n "$$(ls $$($(GO) env GOMODCACHE)/github.com/hashicorp 2>/dev/null)" ] || echo "immutd: first build: downloading the Go modules and compiling (a few minutes on 2 cores)..."
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $@ ./cmd/immutd

$(SIMHOST): $(GOFILES) go.mod go.sum
	@mkdir -p bin
	CGO_ENABLED=0 $(GO) build -trimpath -o $@ ./cmd/immutd-simhost

images: $(IMAGES) ## build the two sample app golden images (bundles)

# A bundle is the committed configs/images/<name>/ tree plus the sample app
# binary. -trimpath and -buildvcs=false make the binary, and so the image
# digest, reproducible.
build/images/sampleapp-v%: cmd/sampleapp/main.go $(shell find configs/images -type f)
	@rm -rf $@ && mkdir -p $@
	cp -R configs/images/sampleapp-v$*/. $@/
	CGO_ENABLED=0 $(GO) build -trimpath -buildvcs=false -ldflags "-X main.version=$*.0.0" -o $@/bin/sampleapp ./cmd/sampleapp

docker-images: images ## build the sample app as docker images immutd/sampleapp:1 and :2 (offline, FROM scratch)
	DOCKER_BUILDKIT=0 docker build -q -f configs/images/sampleapp-docker/Dockerfile -t immutd/sampleapp:1 build/images/sampleapp-v1
	DOCKER_BUILDKIT=0 docker build -q -f configs/images/sampleapp-docker/Dockerfile -t immutd/sampleapp:2 build/images/sampleapp-v2

# Golden VM images of the sample app for the qemu provider (internal/vmimage):
# a Debian kernel, busybox-static, cmd/vminit as the guest's init and the
# sample app bundle, built offline and reproducibly (no times, owners or
# orders of the build machine in them). .ci/ensure-vm-tools installs QEMU
# and unpacks the kernel package into build/vm/kernel.
VM_KERNEL   := build/vm/kernel
VM_IMAGES   := build/vm-images/sampleapp-v1 build/vm-images/sampleapp-v2
VM_DISK     := 1048576

vm-images: $(VM_IMAGES) ## build the sample app as golden VM images (QEMU provider), v1 and v2, in build/vm-images

$(VM_KERNEL)/.unpacked:
	.ci/ensure-vm-tools $(VM_KERNEL)
	touch $@

bin/vminit: $(shell find cmd/vminit internal/vmimage -name '*.go' -not -name '*_test.go') go.mod go.sum
	@mkdir -p bin
	CGO_ENABLED=0 $(GO) build -trimpath -buildvcs=false -o $@ ./cmd/vminit

build/vm-images/sampleapp-v%: build/images/sampleapp-v% bin/vminit $(VM_KERNEL)/.unpacked $(shell find internal/vmimage cmd/vmimage -name '*.go')
	@rm -rf $@ && mkdir -p build/vm-images
	$(GO) run ./cmd/vmimage -kernel-dir $(VM_KERNEL) -busybox /bin/busybox -init bin/vminit -bundle build/images/sampleapp-v$* -disk-size $(VM_DISK) -out $@

run: build ## run a single-node agent keeping the example fleet immutable (Ctrl-C stops the agent, not the fleet)
	@mkdir -p run/fleets.d run/data
	@[ -f run/fleets.d/example.hcl ] || cp configs/dev/example.hcl run/fleets.d/example.hcl
	@echo "immutd: fleet file run/fleets.d/example.hcl; status page http://127.0.0.1:7979/ui/ — or: $(BIN) status (state changes: -token-file run/data/api-token)"
	$(BIN) agent -config configs/dev/agent.hcl

run-vm: build vm-images ## like run, plus a fleet of 3 QEMU VMs (run/fleets.d/vm.hcl; needs QEMU: .ci/ensure-vm-tools)
	@mkdir -p run/fleets.d run/data
	@[ -f run/fleets.d/example.hcl ] || cp configs/dev/example.hcl run/fleets.d/example.hcl
	@[ -f run/fleets.d/vm.hcl ] || cp configs/dev/vm.hcl run/fleets.d/vm.hcl
	@echo "immutd: fleet files run/fleets.d/{example,vm}.hcl, API http://127.0.0.1:7979 — try: $(BIN) status; VM consoles in run/data/qemu/logs/"
	$(BIN) agent -config configs/dev/agent-vm.hcl

test: vm-images ## run every test (installs promtool, haproxy and QEMU, starts Docker if needed)
	.ci/ensure-tools
	.ci/ensure-vm-tools $(VM_KERNEL)
	.ci/ensure-browser
	.ci/ensure-docker
	$(GO) vet ./...
	$(GO) test -race -timeout $(TEST_TIMEOUT) -count=1 ./...

test-short: ## unit tests only: no e2e suite, no Docker, promtool or systemd tools (go test -short)
	$(GO) test -short -count=1 ./...

e2e: vm-images ## the end-to-end suite only (real binary, real Docker, real QEMU)
	.ci/ensure-tools
	.ci/ensure-vm-tools $(VM_KERNEL)
	.ci/ensure-browser
	.ci/ensure-docker
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./internal/e2e/

integ-consul: ## the Consul backend's contract suite against a real Consul agent at CONSUL_HTTP_ADDR (no Consul is needed for make test)
	@[ -n "$$CONSUL_HTTP_ADDR" ] || { echo "integ-consul: set CONSUL_HTTP_ADDR to a Consul agent's HTTP address (and CONSUL_HTTP_TOKEN, CONSUL_CACERT, CONSUL_TLS_SERVER_NAME as it needs)"; exit 2; }
	$(GO) test -race -count=1 -run 'TestContract' -v ./internal/traffic/consul/

bench: build vm-images ## run the benchmarks recorded in BENCHMARKS.md (about an hour, half of it the scale runs; output in build/bench.txt)
	@mkdir -p build
	set -o pipefail; { date -u; git rev-parse --short HEAD 2>/dev/null || true; uname -srm; grep -m1 'model name' /proc/cpuinfo; nproc; \
	  $(GO) test -run '^$$' -bench . -benchtime 2s -count 3 -cpu 1 ./internal/reconcile/ && \
	  $(GO) test -run '^$$' -bench . -benchtime 3s -count 3 ./internal/probe/ && \
	  $(GO) test -run '^$$' -bench . -benchtime 3s ./internal/cluster/ && \
	  $(GO) test -run '^$$' -bench . -benchtime 20x ./internal/leader/ && \
	  $(GO) test -run '^$$' -bench . -benchtime 2s ./internal/provider/local/ && \
	  $(GO) test -run '^$$' -bench . -benchtime 1x -timeout 150m ./internal/e2e/ ; } 2>&1 | tee build/bench.txt

lint: ## gofmt and go vet
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

# make install lays out a system like this (PREFIX=/usr for a distribution
# layout); DESTDIR installs into a root other than / (an image, a package).
# The immutd user and group are created with systemd-sysusers in that root,
# and the agent file is installed root:immutd 0640: readable by the service,
# writable by root only. Paths in the unit and the example fleet follow PREFIX.
install: build ## install binary, systemd unit, sample images and example config (as root; PREFIX, DESTDIR)
	install -D -m0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/immutd
	install -d -m0755 $(DESTDIR)/etc/systemd/system $(DESTDIR)/etc/sysusers.d $(DESTDIR)/etc/tmpfiles.d $(DESTDIR)$(PREFIX)/share/immutd/images
	sed 's#/usr/local/#$(PREFIX)/#g' systemd/immutd.service > $(DESTDIR)/etc/systemd/system/immutd.service
	chmod 0644 $(DESTDIR)/etc/systemd/system/immutd.service
	install -D -m0644 systemd/immutd-docker.conf $(DESTDIR)$(PREFIX)/share/immutd/systemd/immutd-docker.conf
	install -D -m0644 systemd/immutd.sysusers $(DESTDIR)/etc/sysusers.d/immutd.conf
	install -D -m0644 systemd/immutd.tmpfiles $(DESTDIR)/etc/tmpfiles.d/immutd.conf
	install -D -m0644 configs/prometheus/immutd.rules.yml $(DESTDIR)$(PREFIX)/share/immutd/prometheus/immutd.rules.yml
	install -D -m0644 configs/grafana/immutd-dashboard.json $(DESTDIR)$(PREFIX)/share/immutd/grafana/immutd-dashboard.json
	for v in 1 2; do rm -rf $(DESTDIR)$(PREFIX)/share/immutd/images/sampleapp-v$$v && cp -R build/images/sampleapp-v$$v $(DESTDIR)$(PREFIX)/share/immutd/images/; done
	systemd-sysusers --root=$(or $(DESTDIR),/) $(DESTDIR)/etc/sysusers.d/immutd.conf
	install -d -m0755 $(DESTDIR)/etc/immutd/fleets.d
	gid=$$(awk -F: '$$1 == "immutd" { print $$3 }' $(DESTDIR)/etc/group); \
	  [ -n "$$gid" ] || { echo "make install: no immutd group in $(DESTDIR)/etc/group" >&2; exit 1; }; \
	  [ -e $(DESTDIR)/etc/immutd/agent.hcl ] || install -m0640 -o 0 -g $$gid configs/agent.hcl $(DESTDIR)/etc/immutd/agent.hcl
	[ -e $(DESTDIR)/etc/immutd/fleets.d/web.hcl ] || { sed 's#/usr/local/#$(PREFIX)/#g' configs/fleets.d/web.hcl > $(DESTDIR)/etc/immutd/fleets.d/web.hcl && chmod 0644 $(DESTDIR)/etc/immutd/fleets.d/web.hcl; }
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemd-tmpfiles --create /etc/tmpfiles.d/immutd.conf; systemctl daemon-reload; echo "installed; start with: systemctl enable --now immutd"; fi

clean: ## remove build output (not run/, which holds the dev agent's state)
	rm -rf bin build

# make deb builds the Debian package $(DEB_DIR)/immutd_<version>_amd64.deb
# with nfpm (a tool dependency in go.mod: go tool nfpm) from
# configs/packaging/nfpm.yaml: make install's PREFIX=/usr layout, with the
# unit in /lib/systemd/system, the sysusers and tmpfiles entries in
# /usr/lib, /etc/immutd/agent.hcl as a conffile and the maintainer scripts
# of configs/packaging. The version is the binary's VERSION (git describe)
# as a Debian version (configs/packaging/debversion); the binary is built
# like $(BIN), into the staging directory $(DEB_DIR)/deb-stage, so that a
# make install running at the same time does not race on $(BIN).
DEB_DIR     ?= build
DEB_ARCH    := amd64
# The VERSION that LDFLAGS holds (expanded once, when the Makefile was read).
DEB_GITVER   = $(patsubst github.com/immutd/immutd/internal/agent.Version=%,%,$(filter github.com/immutd/immutd/internal/agent.Version=%,$(LDFLAGS)))
# Expanded once, in the last command of the recipe.
DEB_VERSION ?= $(shell configs/packaging/debversion '$(DEB_GITVER)' "$$(git log -1 --format=%ct 2>/dev/null)" "$$(git rev-parse HEAD 2>/dev/null)")

deb: images ## build the Debian package build/immutd_<version>_amd64.deb (nfpm; DEB_DIR, DEB_VERSION)
	rm -rf $(DEB_DIR)/deb-stage && mkdir -p $(DEB_DIR)/deb-stage
	CGO_ENABLED=0 GOOS=linux GOARCH=$(DEB_ARCH) $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(DEB_DIR)/deb-stage/immutd ./cmd/immutd
	sed 's#/usr/local/#/usr/#g' systemd/immutd.service > $(DEB_DIR)/deb-stage/immutd.service
	sed 's#/usr/local/#/usr/#g' configs/fleets.d/web.hcl > $(DEB_DIR)/deb-stage/web.hcl
	v='$(DEB_VERSION)'; [ -n "$$v" ] || { echo "make deb: no Debian version for VERSION=$(DEB_GITVER)" >&2; exit 1; }; \
	  deb=$(DEB_DIR)/immutd_$${v}_$(DEB_ARCH).deb; rm -f "$$deb"; \
	  IMMUTD_DEB_VERSION="$$v" IMMUTD_DEB_ARCH=$(DEB_ARCH) IMMUTD_DEB_STAGE=$(DEB_DIR)/deb-stage IMMUTD_DEB_IMAGES=build/images \
	  SOURCE_DATE_EPOCH=$${SOURCE_DATE_EPOCH:-$$(git log -1 --format=%ct 2>/dev/null)} \
	  $(GO) tool nfpm package -f configs/packaging/nfpm.yaml -p deb -t "$$deb" && echo "make deb: $$deb"
