package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// A loadClient sends one kind of request in a closed loop. Each worker of a
// phase gets its own sender, so a sender need not be safe for concurrent use.
type loadClient interface {
	sender(r loadRequest) (send func(ctx context.Context) error, close func(), err error)
}

// netHTTPClient sends through net/http's Client, as most Go callers would.
type netHTTPClient struct{ c *http.Client }

// newNetHTTPClient keeps one idle connection per worker: with fewer, a closed
// loop at high concurrency would open and close connections and measure that.
func newNetHTTPClient(maxConc int) netHTTPClient {
	return netHTTPClient{&http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			MaxIdleConns:        2 * maxConc,
			MaxIdleConnsPerHost: 2 * maxConc,
			IdleConnTimeout:     time.Minute,
			DisableCompression:  true,
		},
	}}
}

func (n netHTTPClient) sender(r loadRequest) (func(context.Context) error, func(), error) {
	return func(ctx context.Context) error { return r.do(ctx, n.c) }, func() {}, nil
}

// rawClient is the benchmark's default load generator, in the spirit of wrk or
// pgbench: each worker owns one kept-alive HTTP/1.1 connection, writes the
// request prepared once, and reads the answer in its own goroutine. net/http's
// Client runs two more goroutines per connection and hands every request
// between them; on a 2-core machine that the function and the database share,
// that costs the function about a third of its rate (see cmd/pscbench/BENCHMARKS.md).
type rawClient struct{}

func (rawClient) sender(r loadRequest) (func(context.Context) error, func(), error) {
	u, err := url.Parse(r.url)
	if err != nil {
		return nil, nil, err
	}
	if u.Scheme != "http" {
		return nil, nil, fmt.Errorf("raw load client: %s is not plain http", r.url)
	}
	var req bytes.Buffer
	fmt.Fprintf(&req, "%s %s HTTP/1.1\r\nHost: %s\r\n", r.method, u.RequestURI(), u.Host)
	if r.body != nil {
		fmt.Fprintf(&req, "Content-Type: application/json\r\nContent-Length: %d\r\n", len(r.body))
	}
	req.WriteString("\r\n")
	req.Write(r.body)
	c := &rawConn{addr: u.Host, req: req.Bytes(), want: r.wantStatus()}
	return c.roundTrip, c.close, nil
}

// rawConn is one worker's connection, dialled on first use and again after
// the server closes it.
type rawConn struct {
	addr string
	req  []byte
	want int
	conn net.Conn
	br   *bufio.Reader
}

func (c *rawConn) close() {
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
}

func (c *rawConn) roundTrip(ctx context.Context) error {
	if c.conn == nil {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", c.addr)
		if err != nil {
			return err
		}
		c.conn, c.br = conn, bufio.NewReaderSize(conn, 16<<10)
	}
	// A connection deadline rather than a goroutine watching ctx: a hung
	// server cannot stall the loop, and a cancelled ctx ends it after the
	// request in flight.
	deadline := time.Now().Add(30 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	c.conn.SetDeadline(deadline)
	status, keep, err := c.exchange()
	if err != nil || !keep {
		c.close()
	}
	if err != nil {
		return err
	}
	if status != c.want {
		return fmt.Errorf("status %d, want %d", status, c.want)
	}
	return nil
}

// exchange writes the request and reads the whole answer: status line,
// headers, and a body framed by Content-Length or chunked encoding.
func (c *rawConn) exchange() (status int, keepAlive bool, err error) {
	if _, err := c.conn.Write(c.req); err != nil {
		return 0, false, err
	}
	line, err := c.readLine()
	if err != nil {
		return 0, false, err
	}
	// "HTTP/1.1 200 OK"
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
		return 0, false, fmt.Errorf("malformed status line %q", line)
	}
	if status, err = strconv.Atoi(string(line[9:12])); err != nil {
		return 0, false, fmt.Errorf("malformed status line %q", line)
	}
	length, chunked, keepAlive := -1, false, true
	for {
		line, err := c.readLine()
		if err != nil {
			return 0, false, err
		}
		if len(line) == 0 {
			break
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return 0, false, fmt.Errorf("malformed header line %q", line)
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			if length, err = strconv.Atoi(string(value)); err != nil || length < 0 {
				return 0, false, fmt.Errorf("malformed Content-Length %q", value)
			}
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			chunked = bytes.EqualFold(value, []byte("chunked"))
		case bytes.EqualFold(name, []byte("Connection")):
			keepAlive = !bytes.EqualFold(value, []byte("close"))
		}
	}
	switch {
	case chunked:
		err = c.discardChunks()
	case length >= 0:
		_, err = c.br.Discard(length)
	default:
		// No framing: the body runs to the end of the connection.
		_, err = io.Copy(io.Discard, c.br)
		keepAlive = false
	}
	return status, keepAlive, err
}

func (c *rawConn) discardChunks() error {
	for {
		line, err := c.readLine()
		if err != nil {
			return err
		}
		sizeHex, _, _ := bytes.Cut(line, []byte(";"))
		size, err := strconv.ParseUint(string(bytes.TrimSpace(sizeHex)), 16, 31)
		if err != nil {
			return fmt.Errorf("malformed chunk size %q", line)
		}
		if size == 0 {
			// Trailers, then the blank line that ends the body.
			for {
				line, err := c.readLine()
				if err != nil || len(line) == 0 {
					return err
				}
			}
		}
		if _, err := c.br.Discard(int(size) + 2); err != nil {
			return err
		}
	}
}

// readLine returns one CRLF-terminated line without its terminator. The
// slice is valid until the next read.
func (c *rawConn) readLine() ([]byte, error) {
	line, err := c.br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return nil, errors.New("header line too long")
	}
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r")), nil
}
