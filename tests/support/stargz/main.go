// stargz-grpc: a minimal containerd-stargz-grpc for registry-facade's tests.
//
// It serves containerd's snapshots gRPC API on a unix socket, backed by the
// stargz snapshotter library (service.NewStargzSnapshotterService), so that a
// test containerd can use it as a proxy snapshotter:
//
//	[proxy_plugins.stargz]
//	  type = "snapshot"
//	  address = "<the -address socket>"
//
// Registry hosts are resolved in one of two ways:
//
//   - -hosts-dir DIR (or registry.config_path in the config file): a
//     containerd-style certs.d directory, DIR/<host:port>/hosts.toml, read by
//     containerd's remotes/docker/config.ConfigureHosts. This is the way to
//     reach a TLS registry with a private CA (server = "https://...",
//     ca = "/path/ca.crt"). A host without a directory falls back to
//     containerd's defaults: plain HTTP for localhost/127.0.0.1/::1, HTTPS
//     otherwise.
//   - otherwise the library's own resolver config ([resolver.host."H".mirrors]
//     in the config file). It always talks plain HTTP to localhost,
//     127.0.0.1 and ::1 (any port) and HTTPS with the system roots elsewhere
//     ("insecure = true" on a mirror forces HTTP); it has no CA option.
//
// Build with build.sh (GOPATH mode, Debian's golang-*-dev packages, offline).
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/BurntSushi/toml"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/containerd/log"
	"github.com/containerd/containerd/reference"
	"github.com/containerd/containerd/remotes/docker"
	"github.com/containerd/stargz-snapshotter/fs/source"
	"github.com/containerd/stargz-snapshotter/service"
	"github.com/containerd/stargz-snapshotter/service/resolver"
	"github.com/containerd/stargz-snapshotter/version"
	rhttp "github.com/hashicorp/go-retryablehttp"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
)

// fileConfig is the TOML config: the library's service.Config (filesystem
// options at top level, [resolver], ...) plus a CRI-style [registry] table
// whose config_path names a certs.d directory.
type fileConfig struct {
	service.Config
	Registry resolver.Registry `toml:"registry"`
}

func main() {
	var (
		address    = flag.String("address", "/run/stargz-grpc/stargz-grpc.sock", "unix socket to serve the snapshots API on")
		root       = flag.String("root", "/var/lib/stargz-grpc", "root directory of the snapshotter (snapshots, FUSE mounts, caches)")
		configPath = flag.String("config", "", "TOML config file (optional)")
		hostsDir   = flag.String("hosts-dir", "", "containerd-style certs.d directory for registry hosts (overrides registry.config_path)")
		traceReg   = flag.Bool("trace-registry", false, "log every registry request the snapshotter sends (method, URL, Range) and its answer")
		logLevel   = flag.String("log-level", "info", "trace, debug, info, warn, error")
		showVer    = flag.Bool("version", false, "print the library version and exit")
	)
	flag.Parse()
	if *showVer {
		fmt.Printf("stargz-grpc (stargz-snapshotter library %s)\n", version.Version)
		return
	}

	lvl, err := logrus.ParseLevel(*logLevel)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bad -log-level: %v\n", err)
		os.Exit(2)
	}
	logrus.SetLevel(lvl)
	logrus.SetFormatter(&logrus.JSONFormatter{TimestampFormat: log.RFC3339NanoFixed})
	ctx := log.WithLogger(context.Background(), log.L)

	var cfg fileConfig
	if *configPath != "" {
		if _, err := toml.DecodeFile(*configPath, &cfg); err != nil {
			log.G(ctx).WithError(err).Fatalf("cannot read config %q", *configPath)
		}
	}
	if *hostsDir != "" {
		cfg.Registry.ConfigPath = *hostsDir
	}

	var hosts source.RegistryHosts
	if cfg.Registry.ConfigPath != "" {
		// certs.d / hosts.toml resolution (containerd's ConfigureHosts).
		hosts = resolver.RegistryHostsFromCRIConfig(ctx, cfg.Registry)
		log.G(ctx).WithField("config_path", cfg.Registry.ConfigPath).Info("registry hosts from hosts directory")
	} else {
		// What the service does by default: the library's [resolver] config.
		hosts = resolver.RegistryHostsFromConfig(resolver.Config(cfg.ResolverConfig))
	}
	if *traceReg {
		hosts = tracedHosts(ctx, hosts)
	}
	opts := []service.Option{service.WithCustomRegistryHosts(hosts)}

	if err := os.MkdirAll(*root, 0o700); err != nil {
		log.G(ctx).WithError(err).Fatalf("cannot create root %q", *root)
	}
	sn, err := service.NewStargzSnapshotterService(ctx, *root, &cfg.Config, opts...)
	if err != nil {
		log.G(ctx).WithError(err).Fatal("cannot start the stargz snapshotter")
	}

	server := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(server, snapshotservice.FromSnapshotter(sn))

	if err := os.MkdirAll(filepath.Dir(*address), 0o700); err != nil {
		log.G(ctx).WithError(err).Fatalf("cannot create socket directory for %q", *address)
	}
	if err := os.Remove(*address); err != nil && !os.IsNotExist(err) {
		log.G(ctx).WithError(err).Fatalf("cannot remove stale socket %q", *address)
	}
	listener, err := net.Listen("unix", *address)
	if err != nil {
		log.G(ctx).WithError(err).Fatalf("cannot listen on %q", *address)
	}

	served := make(chan error, 1)
	go func() { served <- server.Serve(listener) }()
	log.G(ctx).WithField("address", *address).WithField("root", *root).
		WithField("version", version.Version).Info("serving snapshots API")

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	status := 0
	select {
	case sig := <-signals:
		log.G(ctx).WithField("signal", sig.String()).Info("shutting down")
	case err := <-served:
		log.G(ctx).WithError(err).Error("gRPC server stopped")
		status = 1
	}
	server.Stop()
	// Close unmounts every FUSE mount the snapshotter made under root.
	if err := sn.Close(); err != nil {
		log.G(ctx).WithError(err).Warn("closing the snapshotter")
		status = 1
	}
	os.Exit(status)
}

// tracedHosts wraps each registry host's HTTP client so that every request
// (the snapshotter's Range requests included) is logged with its answer.
func tracedHosts(ctx context.Context, inner source.RegistryHosts) source.RegistryHosts {
	return func(ref reference.Spec) ([]docker.RegistryHost, error) {
		hosts, err := inner(ref)
		if err != nil {
			return nil, err
		}
		for i := range hosts {
			client := http.Client{}
			if hosts[i].Client != nil {
				client = *hosts[i].Client
			}
			if rt, ok := client.Transport.(*rhttp.RoundTripper); ok && rt.Client != nil && rt.Client.HTTPClient != nil {
				// The library's own resolver: a fresh retrying client per
				// call. fs/remote type-asserts *rhttp.RoundTripper to set its
				// retry policy, so trace beneath it (each attempt is logged).
				inner := rt.Client.HTTPClient
				inner.Transport = tracer{ctx: ctx, next: orDefault(inner.Transport)}
				continue
			}
			client.Transport = tracer{ctx: ctx, next: orDefault(client.Transport)}
			hosts[i].Client = &client
		}
		return hosts, nil
	}
}

func orDefault(rt http.RoundTripper) http.RoundTripper {
	if rt == nil {
		return http.DefaultTransport
	}
	return rt
}

type tracer struct {
	ctx  context.Context
	next http.RoundTripper
}

func (t tracer) RoundTrip(req *http.Request) (*http.Response, error) {
	res, err := t.next.RoundTrip(req)
	entry := log.G(t.ctx).WithField("method", req.Method).WithField("url", req.URL.String()).
		WithField("range", req.Header.Get("Range"))
	if err != nil {
		entry.WithError(err).Info("registry request failed")
		return res, err
	}
	entry.WithField("status", res.StatusCode).WithField("content_length", res.ContentLength).
		WithField("content_range", res.Header.Get("Content-Range")).Info("registry request")
	return res, nil
}
