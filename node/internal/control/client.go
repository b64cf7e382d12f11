package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
)

// Client talks to a node's control API.
type Client struct {
	http *http.Client
}

// NewClient returns a client of the control socket at socket. Nothing is
// dialled until the first request.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "unix", socket)
			if err != nil {
				// The *net.OpError repeats the socket path ("dial unix
				// PATH: connect: ..."); keep only its cause.
				var op *net.OpError
				if errors.As(err, &op) {
					err = op.Err
				}
				return nil, fmt.Errorf("control socket %s (is 'gridnet up' running?): %w", socket, err)
			}
			return c, nil
		},
	}
	return &Client{http: &http.Client{Transport: tr}}
}

// Get fetches path and returns the body, or the API's error.
func (c *Client) Get(ctx context.Context, path string) (io.ReadCloser, error) {
	return c.Do(ctx, http.MethodGet, path)
}

// GetJSON fetches path within Timeout and decodes its one JSON value
// into v.
func (c *Client) GetJSON(ctx context.Context, path string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	body, err := c.Get(ctx, path)
	if err != nil {
		return err
	}
	defer body.Close()
	if err := json.NewDecoder(body).Decode(v); err != nil {
		return fmt.Errorf("decode %s: %w", path, err)
	}
	return nil
}

// Do sends a request without a body.
func (c *Client) Do(ctx context.Context, method, path string) (io.ReadCloser, error) {
	return c.Send(ctx, method, path, nil)
}

// Send sends a request with body and returns the response's body, or the
// API's error.
func (c *Client) Send(ctx context.Context, method, path string, body io.Reader) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://gridnet"+path, body)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		// Do wraps every error in a *url.Error, which only adds the method
		// and the internal URL ("Get "http://gridnet/v1/status": ..."):
		// nothing for the user. The cause names the socket.
		if cause := errors.Unwrap(err); cause != nil {
			err = cause
		}
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		var e APIError
		if json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&e) == nil && e.Error != "" {
			return nil, errors.New(e.Error)
		}
		return nil, fmt.Errorf("control API: %s", resp.Status)
	}
	return resp.Body, nil
}
