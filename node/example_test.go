package node_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/aigrid/gridnet/node"
	"github.com/aigrid/gridnet/node/nodetest"
	"github.com/aigrid/gridnet/policy"
)

// Two nodes in one process, with a throwaway CA: web serves HTTPS on its
// overlay address with mutual TLS, app fetches a page from it by name.
// Each side sees the other's verified identity. A program that joins a
// real fabric starts its node with node.StartFromConfig(ctx,
// "node.yaml") instead.
func Example() {
	ctx := context.Background()
	ca, err := nodetest.NewLocalCA("example-ca", "example.gridnet")
	if err != nil {
		log.Fatal(err)
	}

	// web: overlay address 100.64.0.1, inbound TCP 443 allowed.
	webOpts, err := ca.NodeOptions("web", netip.MustParsePrefix("100.64.0.1/10"), nil, time.Hour)
	if err != nil {
		log.Fatal(err)
	}
	if webOpts.Firewall, err = policy.ParseConfig([]byte("inbound:\n  - {proto: tcp, port: 443, host: any}\n")); err != nil {
		log.Fatal(err)
	}
	web, err := node.Start(ctx, webOpts)
	if err != nil {
		log.Fatal(err)
	}
	defer web.Close()
	ln, err := web.ListenTLS("tcp", ":443")
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		client, err := web.PeerIdentity(r.TLS)
		if err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
		fmt.Fprintf(w, "hello %s, from %s\n", client.Name, web.Identity().Name)
	})}
	go srv.Serve(ln)
	defer srv.Close()

	// app: overlay address 100.64.0.2; admitted by web before it dials.
	appOpts, err := ca.NodeOptions("app", netip.MustParsePrefix("100.64.0.2/10"), nil, time.Hour)
	if err != nil {
		log.Fatal(err)
	}
	app, err := node.Start(ctx, appOpts)
	if err != nil {
		log.Fatal(err)
	}
	defer app.Close()
	actx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if _, err := app.Admit(actx, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), web.UnderlayPort())); err != nil {
		log.Fatal(err)
	}

	client := &http.Client{Transport: &http.Transport{
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return app.DialTLS(ctx, network, addr)
		},
	}}
	resp, err := client.Get("https://web/")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		log.Fatal(err)
	}
	server, err := app.PeerIdentity(resp.TLS)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(string(body))
	fmt.Printf("served by %s.%s\n", server.Name, server.Domain)
	// Output:
	// hello app, from web
	// served by web.example.gridnet
}
