// Command stranded reproduces issue 13's stranded-event report with the official durabletask-go SDK
// as worker and client: N orchestrations each wait for one external event ("go"), at most
// -inflight of them running at a time, and the event of each instance is raised by a goroutine
// that its *first* orchestrator execution starts, so the RaiseEvent usually reaches the sidecar
// while that first turn is still in flight. Every instance must then complete with output 4·I.
//
// It runs once against -addr and prints one summary line. Instances that have not completed
// -settle after the last start are stranded: it prints each one's id and runtime status and exits
// with status 1 (as it does for a wrong output, a failed instance or a failed call).
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/client"
	"github.com/microsoft/durabletask-go/task"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

type input struct{ I int }

func main() {
	addr := flag.String("addr", "127.0.0.1:4001", "sidecar gRPC address")
	n := flag.Int("n", 1000, "orchestrations")
	inflight := flag.Int("inflight", 100, "orchestrations in flight")
	workers := flag.Int("workers", 1, "worker connections, each its own gRPC connection and SDK work-item listener")
	settle := flag.Duration("settle", 30*time.Second, "how long after the last start every instance must have completed")
	slotWait := flag.Duration("slot-wait", 3*time.Second, "an in-flight slot waits this long for its instance, then moves on (the instance is checked again at the end), so stranded instances do not block the run")
	label := flag.String("label", "", "name of the run, printed in the summary")
	flag.Parse()
	if *n < 1 || *inflight < 1 || *workers < 1 {
		log.Fatal("need -n >= 1, -inflight >= 1, -workers >= 1")
	}
	prefix := fmt.Sprintf("stranded-%d", time.Now().UnixNano())
	id := func(i int) api.InstanceID { return api.InstanceID(prefix + "-" + strconv.Itoa(i)) }

	cl := dial(*addr)
	var raised sync.Map // instance id → true once its raising goroutine has been started
	var raiseErrs atomic.Int64
	var firstTurns atomic.Int64
	orchestrator := func(ctx *task.OrchestrationContext) (any, error) {
		var in input
		if err := ctx.GetInput(&in); err != nil {
			return nil, err
		}
		// The first execution (nothing in pastEvents yet) raises the instance's event from a
		// goroutine, without waiting for this turn to be completed.
		if !ctx.IsReplaying {
			if _, dup := raised.LoadOrStore(ctx.ID, true); !dup {
				firstTurns.Add(1)
				go func(iid api.InstanceID, i int) {
					rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					if err := cl.RaiseEvent(rctx, iid, "go", api.WithEventPayload(3*i)); err != nil {
						raiseErrs.Add(1)
						log.Printf("%s: raise: %v", iid, err)
					}
				}(ctx.ID, in.I)
			}
		}
		var v int
		if err := ctx.WaitForSingleEvent("go", -1).Await(&v); err != nil {
			return nil, err
		}
		return v + in.I, nil
	}
	wctx, stopWorkers := context.WithCancel(context.Background())
	defer stopWorkers()
	for k := 0; k < *workers; k++ {
		r := task.NewTaskRegistry()
		must(r.AddOrchestratorN("WaitGo", orchestrator))
		if err := dial(*addr).StartWorkItemListener(wctx, r); err != nil {
			log.Fatalf("worker %d: %v", k, err)
		}
	}

	var (
		mu        sync.Mutex
		completed = map[int]bool{}
		late      []int // not completed while holding a slot: checked again after the last start
		errs      []string
	)
	// check records a finished instance; false if it is not finished (yet).
	check := func(i int, md *api.OrchestrationMetadata) bool {
		if md == nil || !md.IsComplete() {
			return false
		}
		mu.Lock()
		defer mu.Unlock()
		want := strconv.Itoa(4 * i)
		if md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED || md.SerializedOutput != want {
			errs = append(errs, fmt.Sprintf("%s: status %v output %q (want %s) failure %v", id(i), md.RuntimeStatus, md.SerializedOutput, want, md.FailureDetails))
		} else {
			completed[i] = true
		}
		return true
	}

	t0 := time.Now()
	sem := make(chan struct{}, *inflight)
	var wg sync.WaitGroup
	for i := 0; i < *n; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), *slotWait)
			defer cancel()
			defer func() { <-sem }()
			if _, err := cl.ScheduleNewOrchestration(context.Background(), "WaitGo", api.WithInstanceID(id(i)), api.WithInput(input{I: i})); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Sprintf("%s: start: %v", id(i), err))
				mu.Unlock()
				return
			}
			md, _ := cl.WaitForOrchestrationCompletion(ctx, id(i), api.WithFetchPayloads(true))
			if !check(i, md) {
				mu.Lock()
				late = append(late, i)
				mu.Unlock()
			}
		}(i)
	}
	lastStart := time.Now() // every start has been issued (the last ones may still be in flight)
	wg.Wait()

	// Late instances get until lastStart + settle.
	deadline, cancel := context.WithDeadline(context.Background(), lastStart.Add(*settle))
	var lwg sync.WaitGroup
	for _, i := range late {
		lwg.Add(1)
		go func(i int) {
			defer lwg.Done()
			md, _ := cl.WaitForOrchestrationCompletion(deadline, id(i), api.WithFetchPayloads(true))
			check(i, md)
		}(i)
	}
	lwg.Wait()
	cancel()
	wall := time.Since(t0)

	// Stranded: started, not finished by the deadline.
	var stranded []string
	for i := 0; i < *n; i++ {
		mu.Lock()
		done := completed[i]
		mu.Unlock()
		if done || isIn(errs, string(id(i))+": start:") {
			continue
		}
		ctx, c := context.WithTimeout(context.Background(), 10*time.Second)
		md, err := cl.FetchOrchestrationMetadata(ctx, id(i))
		c()
		switch {
		case err != nil:
			stranded = append(stranded, fmt.Sprintf("%s: metadata: %v", id(i), err))
		case md.IsComplete():
			continue // finished with a wrong result: already in errs
		default:
			_, r := raised.Load(id(i))
			stranded = append(stranded, fmt.Sprintf("%s: %v (event raised: %v)", id(i), md.RuntimeStatus, r))
		}
	}
	sort.Strings(stranded)
	fmt.Printf("stranded-events %s: workers=%d n=%d inflight=%d completed=%d stranded=%d errors=%d raise_errors=%d first_turns=%d late_after_slot=%d wall=%.1fs\n",
		*label, *workers, *n, *inflight, len(completed), len(stranded), len(errs), raiseErrs.Load(), firstTurns.Load(), len(late), wall.Seconds())
	for _, s := range stranded {
		fmt.Println("  stranded " + s)
	}
	for _, e := range errs {
		fmt.Println("  error " + e)
	}
	if len(stranded) > 0 || len(errs) > 0 || raiseErrs.Load() > 0 || len(completed) != *n {
		os.Exit(1)
	}
}

func isIn(list []string, prefix string) bool {
	for _, s := range list {
		if len(s) >= len(prefix) && s[:len(prefix)] == prefix {
			return true
		}
	}
	return false
}

func dial(addr string) *client.TaskHubGrpcClient {
	conn, err := grpc.Dial(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatalf("dial %s: %v", addr, err)
	}
	return client.NewTaskHubGrpcClient(conn, quietLogger{})
}

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

// quietLogger drops the SDK's info and warning lines and keeps errors.
type quietLogger struct{}

func (quietLogger) Debug(...any)              {}
func (quietLogger) Debugf(string, ...any)     {}
func (quietLogger) Info(...any)               {}
func (quietLogger) Infof(string, ...any)      {}
func (quietLogger) Warn(...any)               {}
func (quietLogger) Warnf(string, ...any)      {}
func (quietLogger) Error(v ...any)            { log.Print(append([]any{"sdk error: "}, v...)...) }
func (quietLogger) Errorf(f string, v ...any) { log.Printf("sdk error: "+f, v...) }
