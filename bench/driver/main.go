// Command driver is the load driver of Duro's benchmark suite. It is an ordinary application of the
// official durabletask-go SDK: one gRPC client that starts orchestrations and waits for them, and one
// work-item listener (-workers K: K of them, each on its own connection) that runs the orchestrators
// and activities below. The same binary drives Duro and the durabletask-go reference sidecar. It
// checks every output (a wrong or missing result fails the run: exit status 1) and prints one JSON
// object (see Result).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/client"
	"github.com/microsoft/durabletask-go/task"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Result is what one run prints.
type Result struct {
	Name            string  `json:"name"` // the run's name in bench/run.sh (default: the scenario)
	Sidecar         string  `json:"sidecar"`
	Scenario        string  `json:"scenario"`
	N               int     `json:"n"`
	M               int     `json:"m"`
	Concurrency     int     `json:"concurrency"`
	Workers         int     `json:"workers"` // worker connections, each with its own SDK work-item listener
	Completed       int     `json:"completed"`
	Failed          int     `json:"failed"`
	WallSeconds     float64 `json:"wall_seconds"`
	OrchPerSec      float64 `json:"orchestrations_per_sec"`
	WorkItems       int64   `json:"work_items"` // orchestrator turns + activity executions seen by the worker
	WorkItemsPerSec float64 `json:"work_items_per_sec"`
	ActivityRuns    int64   `json:"activity_runs"` // activity executions alone (n·m when none ran twice)
	// With -workers > 1: the work items each worker connection ran, in the order they were opened.
	WorkItemsPerWorker []int64 `json:"work_items_per_worker,omitempty"`
	// End-to-end latency per orchestration, as the client sees it: start call to completion returned.
	// For `waiting` it runs from RaiseEvent to completion (the orchestrations were started long before).
	LatencyMs   Percentiles `json:"latency_ms"`
	StartPerSec float64     `json:"start_per_sec,omitempty"` // start-burst, waiting: rate of the start phase
	// Sidecar process figures from /proc (0 when -sidecar-pid is not given).
	SidecarPeakRSSBytes    int64 `json:"sidecar_peak_rss_bytes"`              // VmHWM at the end of the run
	SidecarRSSWaitingBytes int64 `json:"sidecar_rss_waiting_bytes,omitempty"` // waiting: VmRSS with all N waiting
	// waiting: sidecar CPU (utime+stime, 10 ms resolution) while all N wait and nothing else happens.
	SidecarIdleCPUSeconds *float64 `json:"sidecar_idle_cpu_seconds,omitempty"`
	IdleWindowSeconds     float64  `json:"idle_window_seconds,omitempty"`
	SidecarCPUSeconds     float64  `json:"sidecar_cpu_seconds"` // utime+stime spent during the run
	// Time the sidecar's threads were runnable but waiting for a core (/proc/<pid>/task/*/schedstat):
	// high when the machine is busy, e.g. with the driver itself or other jobs.
	SidecarRunqueueSeconds float64  `json:"sidecar_runqueue_wait_seconds"`
	DriverCPUSeconds       float64  `json:"driver_cpu_seconds"` // this process (client + SDK workers)
	Errors                 []string `json:"errors,omitempty"`   // the first few failures
}

type Percentiles struct {
	P50 float64 `json:"p50"`
	P95 float64 `json:"p95"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

var scenarios = map[string]bool{"sequence": true, "fanout": true, "timers": true, "events": true, "start-burst": true, "waiting": true}

func main() {
	addr := flag.String("addr", "127.0.0.1:4001", "sidecar gRPC address")
	scenario := flag.String("scenario", "sequence", "sequence | fanout | timers | events | start-burst | waiting")
	n := flag.Int("n", 100, "orchestrations")
	m := flag.Int("m", 5, "activities per orchestration (sequence, fanout, start-burst) or timers (timers)")
	concurrency := flag.Int("concurrency", 32, "client calls in flight (orchestrations in flight for sequence/fanout/timers/events)")
	workers := flag.Int("workers", 1, "worker connections: each its own gRPC connection and SDK work-item listener, as separate worker processes would have")
	pid := flag.Int("sidecar-pid", 0, "sidecar process id, for RSS and CPU figures")
	label := flag.String("sidecar", "", "name of the sidecar, copied into the JSON")
	name := flag.String("name", "", "name of the run, copied into the JSON (default: the scenario)")
	timerMs := flag.Int("timer-ms", 10, "timers: length of each timer")
	timeout := flag.Duration("timeout", 4*time.Minute, "give up (and fail the run) after this long")
	out := flag.String("out", "", "also write the JSON to this file")
	hold := flag.String("hold", "", "after the run (JSON written), keep the worker connections open until this file exists (several drivers on one task hub: work the others' sidecars hold still needs workers)")
	prefix := flag.String("prefix", "", "instance ids are <prefix>-<i> (default: <scenario>-<start time in ns>); several drivers on one task hub need distinct prefixes")
	flag.Parse()
	if !scenarios[*scenario] {
		log.Fatalf("unknown scenario %q", *scenario)
	}
	if *n < 1 || *m < 0 || *concurrency < 1 || *workers < 1 {
		log.Fatal("need -n >= 1, -m >= 0, -concurrency >= 1, -workers >= 1")
	}

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	// One connection for the client calls and one per worker, each carrying that worker's work-item
	// stream and its completions, as separate processes would have. Every worker has its own registry
	// and executor (the same orchestrators and activities) and counts the work items it runs.
	cl := dial(*addr)
	wctx, stopWorkers := context.WithCancel(context.Background())
	defer stopWorkers()
	perWorker := make([]atomic.Int64, *workers)
	for k := range perWorker {
		if err := dial(*addr).StartWorkItemListener(wctx, newRegistry(&perWorker[k])); err != nil {
			log.Fatalf("worker %d: %v", k, err)
		}
	}

	if *prefix == "" {
		*prefix = fmt.Sprintf("%s-%d", *scenario, time.Now().UnixNano())
	}
	r := &run{c: cl, scenario: *scenario, n: *n, m: *m, conc: *concurrency, timerMs: *timerMs, prefix: *prefix, pid: *pid}
	res := r.execute(ctx)
	res.Sidecar, res.Name, res.Workers = *label, *name, *workers
	if *workers > 1 {
		for k := range perWorker {
			res.WorkItemsPerWorker = append(res.WorkItemsPerWorker, perWorker[k].Load())
		}
	}
	if res.Name == "" {
		res.Name = *scenario
	}

	js, _ := json.MarshalIndent(res, "", "  ")
	fmt.Println(string(js))
	if *out != "" {
		must(os.WriteFile(*out, append(js, '\n'), 0o644))
	}
	for *hold != "" && ctx.Err() == nil {
		if _, err := os.Stat(*hold); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if res.Failed > 0 || res.Completed != res.N {
		os.Exit(1)
	}
}

func dial(addr string) *client.TaskHubGrpcClient {
	conn, err := grpc.Dial(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatalf("dial %s: %v", addr, err)
	}
	return client.NewTaskHubGrpcClient(conn, quietLogger{})
}

// ---- orchestrations and the activity ----

// Input of every orchestration: I is the instance's index (so a result mixed up between instances is
// caught), M the number of steps, DelayMs the timer length.
type input struct {
	I, M, DelayMs int
}

var orchTurns, activityRuns atomic.Int64

// newRegistry registers the orchestrators and the activity for one worker; every function it runs
// (an orchestrator turn or an activity execution) also counts in *count.
func newRegistry(count *atomic.Int64) *task.TaskRegistry {
	orch := func(f task.Orchestrator) task.Orchestrator {
		return func(ctx *task.OrchestrationContext) (any, error) { count.Add(1); return f(ctx) }
	}
	r := task.NewTaskRegistry()
	must(r.AddOrchestratorN("Sequence", orch(sequence)))
	must(r.AddOrchestratorN("FanOut", orch(fanOut)))
	must(r.AddOrchestratorN("Timers", orch(timers)))
	must(r.AddOrchestratorN("Events", orch(events)))
	must(r.AddActivityN("Inc", func(ctx task.ActivityContext) (any, error) { count.Add(1); return inc(ctx) }))
	return r
}

// sequence: M chained activities, each adding 1 → I+M.
func sequence(ctx *task.OrchestrationContext) (any, error) {
	orchTurns.Add(1)
	var in input
	if err := ctx.GetInput(&in); err != nil {
		return nil, err
	}
	x := in.I
	for j := 0; j < in.M; j++ {
		if err := ctx.CallActivity("Inc", task.WithActivityInput(x)).Await(&x); err != nil {
			return nil, err
		}
	}
	return x, nil
}

// fanOut: M parallel activities Inc(I+j), summed → M·I + M(M+1)/2.
func fanOut(ctx *task.OrchestrationContext) (any, error) {
	orchTurns.Add(1)
	var in input
	if err := ctx.GetInput(&in); err != nil {
		return nil, err
	}
	tasks := make([]task.Task, in.M)
	for j := range tasks {
		tasks[j] = ctx.CallActivity("Inc", task.WithActivityInput(in.I+j))
	}
	sum := 0
	for _, t := range tasks {
		var v int
		if err := t.Await(&v); err != nil {
			return nil, err
		}
		sum += v
	}
	return sum, nil
}

// timers: M sequential timers of DelayMs → I+M.
func timers(ctx *task.OrchestrationContext) (any, error) {
	orchTurns.Add(1)
	var in input
	if err := ctx.GetInput(&in); err != nil {
		return nil, err
	}
	for j := 0; j < in.M; j++ {
		if err := ctx.CreateTimer(time.Duration(in.DelayMs) * time.Millisecond).Await(nil); err != nil {
			return nil, err
		}
	}
	return in.I + in.M, nil
}

// events: waits (forever) for event "go" carrying 3·I → 4·I.
func events(ctx *task.OrchestrationContext) (any, error) {
	orchTurns.Add(1)
	var in input
	if err := ctx.GetInput(&in); err != nil {
		return nil, err
	}
	var v int
	if err := ctx.WaitForSingleEvent("go", -1).Await(&v); err != nil {
		return nil, err
	}
	return v + in.I, nil
}

func inc(ctx task.ActivityContext) (any, error) {
	activityRuns.Add(1)
	var x int
	if err := ctx.GetInput(&x); err != nil {
		return nil, err
	}
	return x + 1, nil
}

// ---- the run ----

type run struct {
	c                        *client.TaskHubGrpcClient
	scenario, prefix         string
	n, m, conc, timerMs, pid int

	mu        sync.Mutex
	latencies []time.Duration
	failed    int
	errs      []string
}

func (r *run) id(i int) api.InstanceID { return api.InstanceID(r.prefix + "-" + strconv.Itoa(i)) }

func (r *run) orchestrator() (name string, in func(i int) input, want func(i int) int) {
	m, d := r.m, r.timerMs
	switch r.scenario {
	case "sequence", "start-burst":
		return "Sequence", func(i int) input { return input{I: i, M: m} }, func(i int) int { return i + m }
	case "fanout":
		return "FanOut", func(i int) input { return input{I: i, M: m} }, func(i int) int { return m*i + m*(m+1)/2 }
	case "timers":
		return "Timers", func(i int) input { return input{I: i, M: m, DelayMs: d} }, func(i int) int { return i + m }
	default: // events, waiting
		return "Events", func(i int) input { return input{I: i} }, func(i int) int { return 4 * i }
	}
}

func (r *run) fail(i int, format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failed++
	if len(r.errs) < 10 {
		r.errs = append(r.errs, fmt.Sprintf("%s: ", r.id(i))+fmt.Sprintf(format, args...))
	}
}

// each calls f(i) for i in [0, n) on r.conc goroutines and returns when all are done.
func (r *run) each(ctx context.Context, f func(ctx context.Context, i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < r.conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < r.n && ctx.Err() == nil; i = int(next.Add(1) - 1) {
				f(ctx, i)
			}
		}()
	}
	wg.Wait()
}

func (r *run) execute(ctx context.Context) Result {
	name, in, want := r.orchestrator()
	start := func(ctx context.Context, i int) bool {
		_, err := r.c.ScheduleNewOrchestration(ctx, name, api.WithInstanceID(r.id(i)), api.WithInput(in(i)))
		if err != nil {
			r.fail(i, "start: %v", err)
		}
		return err == nil
	}
	raise := func(ctx context.Context, i int) bool {
		err := r.c.RaiseEvent(ctx, r.id(i), "go", api.WithEventPayload(3*i))
		if err != nil {
			r.fail(i, "raise: %v", err)
		}
		return err == nil
	}
	// finish waits for completion, checks the output and records the latency since t0.
	finish := func(ctx context.Context, i int, t0 time.Time) {
		md, err := r.c.WaitForOrchestrationCompletion(ctx, r.id(i), api.WithFetchPayloads(true))
		switch {
		case err != nil:
			r.fail(i, "wait: %v", err)
		case md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED:
			r.fail(i, "status %v, failure %v", md.RuntimeStatus, md.FailureDetails)
		case md.SerializedOutput != strconv.Itoa(want(i)):
			r.fail(i, "output %q, want %d", md.SerializedOutput, want(i))
		default:
			d := time.Since(t0)
			r.mu.Lock()
			r.latencies = append(r.latencies, d)
			r.mu.Unlock()
		}
	}

	cpu0, rq0 := procCPU(r.pid), procRunqueueWait(r.pid)
	drv0 := selfCPU()
	var res Result
	t0 := time.Now()
	switch r.scenario {
	case "sequence", "fanout", "timers":
		r.each(ctx, func(ctx context.Context, i int) {
			t := time.Now()
			if start(ctx, i) {
				finish(ctx, i, t)
			}
		})
	case "events":
		// The event is raised once the orchestration is running, i.e. waiting for it.
		r.each(ctx, func(ctx context.Context, i int) {
			t := time.Now()
			if !start(ctx, i) {
				return
			}
			if _, err := r.c.WaitForOrchestrationStart(ctx, r.id(i)); err != nil {
				r.fail(i, "wait for start: %v", err)
				return
			}
			if raise(ctx, i) {
				finish(ctx, i, t)
			}
		})
	case "start-burst":
		started := make([]time.Time, r.n)
		ok := make([]bool, r.n)
		r.each(ctx, func(ctx context.Context, i int) {
			started[i] = time.Now()
			ok[i] = start(ctx, i)
		})
		res.StartPerSec = round(float64(r.n)/time.Since(t0).Seconds(), 1)
		r.each(ctx, func(ctx context.Context, i int) {
			if ok[i] {
				finish(ctx, i, started[i])
			}
		})
	case "waiting":
		ok := make([]bool, r.n)
		r.each(ctx, func(ctx context.Context, i int) { ok[i] = start(ctx, i) })
		res.StartPerSec = round(float64(r.n)/time.Since(t0).Seconds(), 1)
		// All N must be running, i.e. parked on WaitForSingleEvent, before RSS is read.
		r.each(ctx, func(ctx context.Context, i int) {
			if !ok[i] {
				return
			}
			if _, err := r.c.WaitForOrchestrationStart(ctx, r.id(i)); err != nil {
				r.fail(i, "wait for start: %v", err)
				ok[i] = false
			}
		})
		res.SidecarRSSWaitingBytes = procStatus(r.pid, "VmRSS")
		// Parked instances must cost no CPU: watch the idle sidecar for a while (this window
		// is left out of the wall time).
		const idle = 2 * time.Second
		idle0 := procCPU(r.pid)
		time.Sleep(idle)
		idleCPU := round(procCPU(r.pid)-idle0, 2)
		res.SidecarIdleCPUSeconds = &idleCPU
		res.IdleWindowSeconds = idle.Seconds()
		t0 = t0.Add(idle)
		r.each(ctx, func(ctx context.Context, i int) {
			t := time.Now()
			if ok[i] && raise(ctx, i) {
				finish(ctx, i, t)
			}
		})
	}
	wall := time.Since(t0).Seconds()

	res.Scenario, res.N, res.M, res.Concurrency = r.scenario, r.n, r.m, r.conc
	res.Completed = len(r.latencies)
	res.Failed = r.n - res.Completed // wrong, failed, or never finished (timeout)
	if missing := res.Failed - r.failed; missing > 0 {
		r.errs = append(r.errs, fmt.Sprintf("%d orchestrations not checked: %v", missing, ctx.Err()))
	}
	res.WallSeconds = round(wall, 3)
	res.OrchPerSec = round(float64(res.Completed)/wall, 1)
	res.WorkItems = orchTurns.Load() + activityRuns.Load()
	res.ActivityRuns = activityRuns.Load()
	res.WorkItemsPerSec = round(float64(res.WorkItems)/wall, 1)
	res.LatencyMs = percentiles(r.latencies)
	// VmHWM is updated lazily by the kernel and can trail a VmRSS read earlier.
	res.SidecarPeakRSSBytes = max(procStatus(r.pid, "VmHWM"), res.SidecarRSSWaitingBytes)
	res.SidecarCPUSeconds = round(procCPU(r.pid)-cpu0, 2)
	res.SidecarRunqueueSeconds = round(procRunqueueWait(r.pid)-rq0, 2)
	res.DriverCPUSeconds = round(selfCPU()-drv0, 2)
	res.Errors = r.errs
	return res
}

// ---- measurements ----

func percentiles(ds []time.Duration) Percentiles {
	if len(ds) == 0 {
		return Percentiles{}
	}
	sort.Slice(ds, func(a, b int) bool { return ds[a] < ds[b] })
	at := func(q float64) float64 {
		k := int(q*float64(len(ds))+0.999999) - 1 // nearest rank
		k = max(0, min(k, len(ds)-1))
		return round(float64(ds[k].Microseconds())/1000, 2)
	}
	return Percentiles{P50: at(0.50), P95: at(0.95), P99: at(0.99), Max: at(1)}
}

// procStatus reads a "kB" field of /proc/<pid>/status, in bytes.
func procStatus(pid int, field string) int64 {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		log.Printf("read status of sidecar %d: %v", pid, err)
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// procCPU is utime+stime of a process in seconds (/proc/<pid>/stat fields 14 and 15, USER_HZ = 100).
func procCPU(pid int) float64 {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may contain spaces: fields after it start past the last ')'.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return float64(ut+st) / 100
}

// procRunqueueWait sums the run-queue wait (second field of schedstat, ns) of a process's threads.
func procRunqueueWait(pid int) float64 {
	if pid == 0 {
		return 0
	}
	files, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	var ns int64
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil {
			if fs := strings.Fields(string(b)); len(fs) >= 2 {
				v, _ := strconv.ParseInt(fs[1], 10, 64)
				ns += v
			}
		}
	}
	return float64(ns) / 1e9
}

func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

func round(x float64, digits int) float64 {
	p, _ := strconv.ParseFloat(strconv.FormatFloat(x, 'f', digits, 64), 64)
	return p
}

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

// quietLogger drops the SDK's info and warning lines (one per health ping, for instance) and keeps errors.
type quietLogger struct{}

func (quietLogger) Debug(...any)              {}
func (quietLogger) Debugf(string, ...any)     {}
func (quietLogger) Info(...any)               {}
func (quietLogger) Infof(string, ...any)      {}
func (quietLogger) Warn(...any)               {}
func (quietLogger) Warnf(string, ...any)      {}
func (quietLogger) Error(v ...any)            { log.Print(append([]any{"sdk error: "}, v...)...) }
func (quietLogger) Errorf(f string, v ...any) { log.Printf("sdk error: "+f, v...) }
