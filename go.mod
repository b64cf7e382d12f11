module github.com/aigrid/gridnet

go 1.26.8

require (
	github.com/flynn/noise v1.1.0 // admission handshake (Noise XX)
	github.com/miekg/dns v1.1.73 // the node's DNS responder (node/dns): message parsing and the server loop
	github.com/prometheus/client_golang v1.25.0 // metrics endpoint (node/metrics)
	github.com/prometheus/client_model v0.6.3 // metric families in the metrics tests
	github.com/prometheus/common v0.73.1 // Prometheus text parser in the metrics tests
	github.com/vishvananda/netlink v1.3.1 // kernel mode: TUN MTU, addresses and link state over rtnetlink (no iproute2)
	go.etcd.io/bbolt v1.5.0 // vault file: crash-safe embedded store
	go.yaml.in/yaml/v3 v3.0.6 // node config with line numbers in errors
	golang.org/x/crypto v0.59.0 // XChaCha20-Poly1305, Argon2id, X25519
	golang.org/x/net v0.62.0 // ICMP echo on kernel TUNs
	golang.org/x/sys v0.50.0 // flock holder lookup, errno classes
	golang.org/x/term v0.48.0 // vault passphrase prompt without echo
	golang.zx2c4.com/wireguard v0.0.0-20260522210424-ecfc5a8d5446 // WireGuard device, Bind, netstack TUN (pins gVisor)
	gvisor.dev/gvisor v0.0.0-20250503011706-39ed1f5ac29c // userspace network stack (stack); the version wireguard-go pins
)

require (
	github.com/hashicorp/go-msgpack/v2 v2.1.5 // memberlist's wire encoding: the insider test harness (discovery/insider) and fuzz tests
	github.com/hashicorp/memberlist v0.7.0
)

require (
	github.com/beorn7/perks v1.0.1 // indirect
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/google/btree v1.1.3 // indirect
	github.com/hashicorp/errwrap v1.1.0 // indirect
	github.com/hashicorp/go-immutable-radix v1.3.1 // indirect
	github.com/hashicorp/go-metrics v0.7.0 // indirect
	github.com/hashicorp/go-multierror v1.1.1 // indirect
	github.com/hashicorp/go-sockaddr v1.0.7 // indirect
	github.com/hashicorp/golang-lru v1.0.2 // indirect
	github.com/kylelemons/godebug v1.1.0 // indirect
	github.com/munnerz/goautoneg v0.0.0-20191010083416-a7dc8b61c822 // indirect
	github.com/pandatix/go-abnf v0.5.3 // indirect
	github.com/prometheus/procfs v0.22.0 // indirect
	github.com/sean-/seed v0.0.0-20170313163322-e2103e2c3529 // indirect
	github.com/vishvananda/netns v0.0.5 // indirect
	golang.org/x/time v0.7.0 // indirect
	golang.zx2c4.com/wintun v0.0.0-20230126152724-0fa3db229ce2 // indirect
	google.golang.org/protobuf v1.36.12 // indirect
)
