// The Pub/Sub emulator weir's tests run: Google's in-memory fake (pstest, from the Go client
// library) as a gRPC server on one port. Built by runtime/tests/setup.sh; started by
// runtime/tests/pubsub_support with `-port N`.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"cloud.google.com/go/pubsub/v2/pstest"
)

func main() {
	port := flag.Int("port", 8085, "port to listen on (127.0.0.1)")
	flag.Parse()
	srv := pstest.NewServerWithAddress(fmt.Sprintf("127.0.0.1:%d", *port))
	fmt.Printf("pstest listening on %s\n", srv.Addr)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	srv.Close()
}
