package pubsubclient

import (
	"time"

	"cloud.google.com/go/pubsub/v2"
	vkit "cloud.google.com/go/pubsub/v2/apiv1"
	"github.com/googleapis/gax-go/v2"
	"google.golang.org/grpc/codes"
)

// ReconnectMax caps the pull stream's reconnect backoff below the library's
// own cap. While an emulator restarts, the stream retries with growing
// pauses; under the library's cap a restarted emulator's messages would wait
// out the last pause, and so would Ctrl-C, which waits for it to end.
const ReconnectMax = 2 * time.Second

// Config is the commands' client configuration: the library's retry of
// StreamingPull, on the same codes, with ReconnectMax.
func Config() *pubsub.ClientConfig {
	return &pubsub.ClientConfig{SubscriptionAdminCallOptions: &vkit.SubscriptionAdminCallOptions{
		StreamingPull: []gax.CallOption{gax.WithRetry(func() gax.Retryer {
			return gax.OnCodes([]codes.Code{codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted, codes.Internal, codes.Unavailable},
				gax.Backoff{Initial: 100 * time.Millisecond, Max: ReconnectMax, Multiplier: 2})
		})},
	}}
}
