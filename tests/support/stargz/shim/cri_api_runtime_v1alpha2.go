// Package v1alpha2 is a build shim standing in for
// k8s.io/cri-api/pkg/apis/runtime/v1alpha2, which Debian 12 does not package.
//
// The stargz-snapshotter library's service/resolver (cri.go) imports it for
// one type only, AuthConfig, used to turn a CRI-style [registry.configs."H".auth]
// table into a username/secret. build.sh copies this file to
// $GOPATH/src/k8s.io/cri-api/pkg/apis/runtime/v1alpha2/ of its temporary
// GOPATH. The fields are the ones that code reads, with the upstream names.
package v1alpha2

// AuthConfig holds credentials for one registry (upstream: a protobuf message).
type AuthConfig struct {
	Username      string
	Password      string
	Auth          string
	ServerAddress string
	IdentityToken string
	RegistryToken string
}
