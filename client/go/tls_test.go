package snowlease

// TLS against the real server, with a throwaway CA and certificates made here.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testCA is a CA that signs certificates into files under dir.
type testCA struct {
	t    *testing.T
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string // the CA certificate, PEM
}

func newTestCA(t *testing.T, name string) *testCA {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &testCA{t: t, dir: t.TempDir(), cert: cert, key: key}
	ca.file = ca.write(name+"-ca.pem", "CERTIFICATE", der)
	return ca
}

func (ca *testCA) write(name, kind string, der []byte) string {
	path := filepath.Join(ca.dir, name)
	if err := writeFile(path, string(pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}))); err != nil {
		ca.t.Fatal(err)
	}
	return path
}

// issue signs a certificate for dnsNames and ips; it returns the certificate and key files.
func (ca *testCA) issue(name string, usage x509.ExtKeyUsage, dnsNames []string, ips ...net.IP) (string, string) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		ca.t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: dnsNames, IPAddresses: ips, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		ca.t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		ca.t.Fatal(err)
	}
	return ca.write(name+".pem", "CERTIFICATE", der), ca.write(name+"-key.pem", "PRIVATE KEY", pkcs8)
}

func drawSome(t *testing.T, c *Client) {
	t.Helper()
	for i := 0; i < 10_000; i++ {
		if _, err := c.NextID(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

// fatalTLS checks a Dial failed fast for a TLS reason that waiting cannot fix.
func fatalTLS(t *testing.T, what string, err error, start time.Time) {
	t.Helper()
	var ce *ConnError
	if !errors.As(err, &ce) || ce.Op != "tls" || IsRetryable(err) {
		t.Fatalf("%s: %v", what, err)
	}
	if errors.Is(err, ErrUnavailable) {
		t.Fatalf("%s: waited for the timeout instead of failing at once: %v", what, err)
	}
	t.Logf("%s: refused after %v: %v", what, time.Since(start), err)
}

func TestTLSServesClientsThatTrustItsCAUnderTheNameOnItsCertificate(t *testing.T) {
	ca := newTestCA(t, "snowlease-test")
	cert, key := ca.issue("server", x509.ExtKeyUsageServerAuth, []string{"localhost"}, net.IPv4(127, 0, 0, 1))
	s := startServer(t, 7, "--tls-cert", cert, "--tls-key", key)

	drawSome(t, dial(t, []string{s.addr}, quick(WithTLSCAFile(ca.file))...))
	drawSome(t, dial(t, []string{net.JoinHostPort("localhost", s.port())}, quick(WithTLSCAFile(ca.file))...))
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	drawSome(t, dial(t, []string{s.addr}, quick(WithTLS(&tls.Config{RootCAs: pool}))...))

	other := newTestCA(t, "someone-else")
	start := time.Now()
	_, err := Dial(context.Background(), []string{s.addr}, quick(WithTLSCAFile(other.file))...)
	fatalTLS(t, "untrusted CA", err, start)

	start = time.Now()
	_, err = Dial(context.Background(), []string{s.addr}, quick(WithTLSCAFile(ca.file), WithTLSServerName("elsewhere.test"))...)
	fatalTLS(t, "another name", err, start)

	_, err = Dial(context.Background(), []string{s.addr}, quick()...)
	if !errors.Is(err, ErrProtocol) || errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "the server speaks TLS") {
		t.Fatalf("plaintext to a TLS port: %v", err)
	}
}

func TestTLSServerNameOverrideMatchesACertificateForAServiceName(t *testing.T) {
	ca := newTestCA(t, "snowlease-test")
	cert, key := ca.issue("server", x509.ExtKeyUsageServerAuth, []string{"snowlease.ids.svc"})
	s := startServer(t, 8, "--tls-cert", cert, "--tls-key", key)
	drawSome(t, dial(t, []string{s.addr}, quick(WithTLSCAFile(ca.file), WithTLSServerName("snowlease.ids.svc"))...))
	start := time.Now()
	_, err := Dial(context.Background(), []string{s.addr}, quick(WithTLSCAFile(ca.file))...)
	fatalTLS(t, "an IP the certificate does not name", err, start)
}

func TestMutualTLSNeedsAClientCertificateFromTheServersCA(t *testing.T) {
	ca := newTestCA(t, "snowlease-test")
	cert, key := ca.issue("server", x509.ExtKeyUsageServerAuth, nil, net.IPv4(127, 0, 0, 1))
	s := startServer(t, 9, "--tls-cert", cert, "--tls-key", key, "--tls-client-ca", ca.file)
	clientCert, clientKey := ca.issue("client", x509.ExtKeyUsageClientAuth, []string{"client"})
	pair, err := tls.LoadX509KeyPair(clientCert, clientKey)
	if err != nil {
		t.Fatal(err)
	}
	withCert := &tls.Config{Certificates: []tls.Certificate{pair}}
	drawSome(t, dial(t, []string{s.addr}, quick(WithTLS(withCert), WithTLSCAFile(ca.file))...))
	start := time.Now()
	_, err = Dial(context.Background(), []string{s.addr}, quick(WithTLSCAFile(ca.file))...)
	fatalTLS(t, "no client certificate", err, start)
}

func TestATLSClientRefusesAPlaintextServerAtOnce(t *testing.T) {
	ca := newTestCA(t, "snowlease-test")
	s := startServer(t, 12)
	start := time.Now()
	_, err := Dial(context.Background(), []string{s.addr}, quick(WithTLSCAFile(ca.file))...)
	fatalTLS(t, "plaintext server", err, start)
}
