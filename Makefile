# ballast — see README.md.
GO      ?= go
OUT     ?= out
RECIPE  ?= control-plane
# The race detector needs cgo; everything shipped to nodes is built with CGO_ENABLED=0 by imgbuild.
TESTFLAGS ?= -race -count=1 -timeout 60m

.PHONY: all deps build payload image images test check bench-boot bench-kubeboot bench-netconf bench-txn bench-netboot bench-vip bench-apiproxy bench-cluster bench-firewall bench-services conformance clean

all: build

deps:
	tools/deps.sh test

build:
	$(GO) build -o bin/ ./image/cmd/imgbuild

image: build
	tools/deps.sh build
	bin/imgbuild --recipe $(RECIPE) --out $(OUT)

images: build
	tools/deps.sh build
	bin/imgbuild --recipe control-plane --out $(OUT)
	bin/imgbuild --recipe worker --out $(OUT)

check:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet ./...

# Fuzz targets run a bounded number of inputs on every test run (≈ 10 s each here); their corpora live in
# testdata/fuzz. A count, not a duration: with a duration Go's fuzz coordinator can fail the run with a bare
# "context deadline exceeded" and no failing input when a worker is busy at the deadline (seen in CI; known
# upstream). -timeout bounds a hang.
FUZZTIME ?= 60000x

# The Kubernetes payload (cached in ~/.cache/ballast/payload by version) is built
# before the tests, so its cold build does not count against a test binary's timeout.
payload:
	$(GO) run ./image/payload/cmd/buildpayload -role control-plane
	$(GO) run ./image/payload/cmd/buildpayload kubectl ctr agnhost e2e

test: deps check payload
	$(GO) test $(TESTFLAGS) ./...
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) -timeout 10m ./initagent/config/
	$(GO) test -run '^$$' -fuzz '^FuzzHandler$$' -fuzztime $(FUZZTIME) -timeout 10m ./initagent/api/
	$(MAKE) conformance

# The upstream Kubernetes conformance tests ballast runs (tools/conformance)
# against a lab cluster of container nodes built from the image.
conformance: image
	$(GO) run ./tools/conformance -artifacts $(OUT)/$(RECIPE)

bench-netconf: deps
	$(GO) run ./tools/bench/netconf

bench-txn: deps
	$(GO) run ./tools/bench/txn

bench-netboot: deps
	$(GO) run ./tools/bench/netboot

bench-apiproxy: deps
	$(GO) run ./tools/bench/apiproxy

bench-vip: deps
	$(GO) run ./tools/bench/vip

bench-firewall: deps
	$(GO) run ./tools/bench/firewall

bench-services: image
	$(GO) run ./tools/bench/services -artifacts $(OUT)/$(RECIPE)

bench-cluster: image
	$(GO) run ./tools/bench/cluster -artifacts $(OUT)/$(RECIPE)

bench-boot: deps
	$(GO) run ./tools/bench/boot

bench-kubeboot: payload
	$(GO) run ./tools/bench/kubeboot

clean:
	rm -rf bin $(OUT)
