// Accept-all consumer on Debian's golang-github-chifflier-nfqueue-go-dev (cgo
// binding of libnetfilter_queue), for bench/run.sh:  go_accept [QUEUE] [MAXLEN]
// Built by `make -C bench go_accept` with GO111MODULE=off GOPATH=/usr/share/gocode.
package main

import (
	"io"
	"log"
	"os"
	"strconv"
	"syscall"

	"github.com/chifflier/nfqueue-go/nfqueue"
)

func arg(i, def int) int {
	if len(os.Args) > i {
		if n, err := strconv.Atoi(os.Args[i]); err == nil {
			return n
		}
	}
	return def
}

func main() {
	log.SetOutput(io.Discard) // the binding logs every verdict through package log
	q := new(nfqueue.Queue)
	q.SetCallback(func(p *nfqueue.Payload) int {
		p.SetVerdict(nfqueue.NF_ACCEPT)
		return 0
	})
	if err := q.Init(); err != nil {
		os.Stderr.WriteString("nfq_open failed\n")
		os.Exit(1)
	}
	q.Bind(syscall.AF_INET)
	if err := q.CreateQueue(arg(1, 0)); err != nil {
		os.Stderr.WriteString("nfq_create_queue failed\n")
		os.Exit(1)
	}
	q.SetQueueMaxLen(uint32(arg(2, 1024)))
	err := q.Loop()
	// The binding hands q to C as a bare Go pointer: q must stay reachable
	// while Loop runs, or the GC frees it and the next packet crashes.
	q.DestroyQueue()
	q.Close()
	if err != nil {
		os.Stderr.WriteString("nfqueue loop failed\n")
		os.Exit(1)
	}
}
