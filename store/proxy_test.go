package store_test

import (
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
)

// resetProxy is a loopback TCP proxy between a pool and PostgreSQL that can
// reset the connections it carries, as a NAT, load balancer or Cloud SQL's
// own proxy does to an idle connection. A reset (RST, not FIN) makes the
// client's next write fail at once, before any byte reaches the server: the
// failure pgconn.SafeToRetry classifies as safe to retry. A backend ended by
// the server (pg_terminate_backend) is not such a fault: the client learns of
// it only after it has sent its statement.
type resetProxy struct {
	ln       net.Listener
	upstream string

	mu       sync.Mutex
	live     map[*net.TCPConn]net.Conn // client side -> its upstream
	accepted int
	wg       sync.WaitGroup
}

// startResetProxy listens on a free loopback port and forwards to upstream
// ("host:port"). It is closed with the test.
func startResetProxy(t testing.TB, upstream string) *resetProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &resetProxy{ln: ln, upstream: upstream, live: map[*net.TCPConn]net.Conn{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() {
		ln.Close()
		p.resetAll()
		p.wg.Wait()
	})
	return p
}

// via rewrites a connection URL to go through the proxy.
func (p *resetProxy) via(t testing.TB, rawURL string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = p.ln.Addr().String()
	return u.String()
}

func (p *resetProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.upstream)
		if err != nil {
			c.Close()
			continue
		}
		client := c.(*net.TCPConn)
		p.mu.Lock()
		p.live[client] = up
		p.accepted++
		p.mu.Unlock()
		p.wg.Add(2)
		go func() {
			defer p.wg.Done()
			io.Copy(up, client)
			up.Close()
		}()
		go func() {
			defer p.wg.Done()
			io.Copy(client, up)
			p.drop(client)
		}()
	}
}

// drop forgets a connection the server ended, closing the client side normally.
func (p *resetProxy) drop(client *net.TCPConn) {
	p.mu.Lock()
	_, ok := p.live[client]
	delete(p.live, client)
	p.mu.Unlock()
	if ok {
		client.Close()
	}
}

// resetAll resets every connection it carries: an RST to the client, a close
// to the server. It returns how many it reset.
func (p *resetProxy) resetAll() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for client, up := range p.live {
		client.SetLinger(0) // Close now sends RST instead of FIN
		client.Close()
		up.Close()
		delete(p.live, client)
		n++
	}
	return n
}

// connections returns how many client connections the proxy has accepted.
func (p *resetProxy) connections() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}
