// Package sdkcompat runs the official Go SDK (github.com/microsoft/durabletask-go, the release
// the module proxy serves) as client and worker against the real duro binary: activities,
// timers, external events, sub-orchestrations, terminate/suspend/resume and purge. The Go SDK's
// worker completes work items without completion tokens, so every test also covers that.
//
// DURO_BIN names the binary (default: target/debug/duro of this repository). Run with
// `cd bench && go test ./sdkcompat/` (scripts/test.sh does).
package sdkcompat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/microsoft/durabletask-go/api"
	"github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/client"
	"github.com/microsoft/durabletask-go/task"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

var cl *client.TaskHubGrpcClient

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	bin := os.Getenv("DURO_BIN")
	if bin == "" {
		bin = filepath.Join("..", "..", "target", "debug", "duro")
	}
	dir, err := os.MkdirTemp("", "duro-gosdk-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	addr, err := freeAddr()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	logFile, err := os.Create(filepath.Join(dir, "duro.log"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer logFile.Close()
	store := []string{"--db", filepath.Join(dir, "duro.db")}
	// DURO_TEST_STORE=postgres: a task hub of its own on DURO_TEST_PG_URL (scripts/pg.sh).
	if os.Getenv("DURO_TEST_STORE") == "postgres" {
		store = []string{"--db", os.Getenv("DURO_TEST_PG_URL"), "--task-hub", fmt.Sprintf("go_%d_%d", os.Getpid(), time.Now().UnixNano())}
	}
	sidecar := exec.Command(bin, append([]string{"--listen", addr, "--http-listen", "off"}, store...)...)
	sidecar.Stdout, sidecar.Stderr = logFile, logFile
	if err := sidecar.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "start %s: %v\n", bin, err)
		return 1
	}
	defer func() {
		_ = sidecar.Process.Signal(os.Interrupt)
		_ = sidecar.Wait()
	}()
	if err := waitListening(addr, 20*time.Second); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}

	cl = dial(addr)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	if err := dial(addr).StartWorkItemListener(ctx, registry()); err != nil {
		fmt.Fprintf(os.Stderr, "worker: %v\n", err)
		return 1
	}
	code := m.Run()
	if code != 0 {
		if log, err := os.ReadFile(filepath.Join(dir, "duro.log")); err == nil {
			fmt.Fprintf(os.Stderr, "--- duro log ---\n%s\n", log)
		}
	}
	return code
}

func registry() *task.TaskRegistry {
	r := task.NewTaskRegistry()
	must(r.AddActivityN("Hello", func(ctx task.ActivityContext) (any, error) {
		var name string
		if err := ctx.GetInput(&name); err != nil {
			return nil, err
		}
		return "Hello " + name, nil
	}))
	must(r.AddOrchestratorN("Sequence", func(ctx *task.OrchestrationContext) (any, error) {
		var out []string
		for _, city := range []string{"Tokyo", "London"} {
			var s string
			if err := ctx.CallActivity("Hello", task.WithActivityInput(city)).Await(&s); err != nil {
				return nil, err
			}
			out = append(out, s)
		}
		return out, nil
	}))
	must(r.AddOrchestratorN("Timer", func(ctx *task.OrchestrationContext) (any, error) {
		if err := ctx.CreateTimer(300 * time.Millisecond).Await(nil); err != nil {
			return nil, err
		}
		return "fired", nil
	}))
	must(r.AddOrchestratorN("WaitApproval", func(ctx *task.OrchestrationContext) (any, error) {
		var v string
		if err := ctx.WaitForSingleEvent("approval", -1).Await(&v); err != nil {
			return nil, err
		}
		return "approved by " + v, nil
	}))
	must(r.AddOrchestratorN("Parent", func(ctx *task.OrchestrationContext) (any, error) {
		var s string
		if err := ctx.CallSubOrchestrator("Child", task.WithSubOrchestratorInput("Paris")).Await(&s); err != nil {
			return nil, err
		}
		return "child said: " + s, nil
	}))
	must(r.AddOrchestratorN("Child", func(ctx *task.OrchestrationContext) (any, error) {
		var name string
		if err := ctx.GetInput(&name); err != nil {
			return nil, err
		}
		var s string
		if err := ctx.CallActivity("Hello", task.WithActivityInput(name)).Await(&s); err != nil {
			return nil, err
		}
		return s, nil
	}))
	return r
}

func TestActivities(t *testing.T) {
	md := runToCompletion(t, "Sequence")
	assertOutput(t, md, []string{"Hello Tokyo", "Hello London"})
}

func TestTimer(t *testing.T) {
	start := time.Now()
	md := runToCompletion(t, "Timer")
	assertOutput(t, md, "fired")
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Fatalf("the timer fired after %v, before its 300ms", d)
	}
}

func TestExternalEvent(t *testing.T) {
	ctx := testContext(t)
	id := schedule(t, "WaitApproval")
	if _, err := cl.WaitForOrchestrationStart(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := cl.RaiseEvent(ctx, id, "approval", api.WithEventPayload("ops")); err != nil {
		t.Fatal(err)
	}
	assertOutput(t, waitCompleted(t, id), "approved by ops")
}

func TestSubOrchestration(t *testing.T) {
	assertOutput(t, runToCompletion(t, "Parent"), "child said: Hello Paris")
}

func TestTerminate(t *testing.T) {
	ctx := testContext(t)
	id := schedule(t, "WaitApproval")
	if _, err := cl.WaitForOrchestrationStart(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := cl.TerminateOrchestration(ctx, id, api.WithOutput("stopped")); err != nil {
		t.Fatal(err)
	}
	md, err := cl.WaitForOrchestrationCompletion(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if md.RuntimeStatus != api.RUNTIME_STATUS_TERMINATED {
		t.Fatalf("status %v, want TERMINATED", md.RuntimeStatus)
	}
	if md.SerializedOutput != `"stopped"` {
		t.Fatalf("output %q, want the terminate reason", md.SerializedOutput)
	}
}

func TestSuspendResume(t *testing.T) {
	ctx := testContext(t)
	id := schedule(t, "WaitApproval")
	if _, err := cl.WaitForOrchestrationStart(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := cl.SuspendOrchestration(ctx, id, "maintenance"); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, id, api.RUNTIME_STATUS_SUSPENDED)
	// An event raised while suspended is kept and delivered after resume.
	if err := cl.RaiseEvent(ctx, id, "approval", api.WithEventPayload("night shift")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	waitStatus(t, id, api.RUNTIME_STATUS_SUSPENDED)
	if err := cl.ResumeOrchestration(ctx, id, "done"); err != nil {
		t.Fatal(err)
	}
	assertOutput(t, waitCompleted(t, id), "approved by night shift")
}

func TestPurge(t *testing.T) {
	ctx := testContext(t)
	id := schedule(t, "WaitApproval")
	if _, err := cl.WaitForOrchestrationStart(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := cl.PurgeOrchestrationState(ctx, id); err == nil {
		t.Fatal("purging a running instance succeeded")
	}
	if err := cl.RaiseEvent(ctx, id, "approval", api.WithEventPayload("x")); err != nil {
		t.Fatal(err)
	}
	waitCompleted(t, id)
	if err := cl.PurgeOrchestrationState(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.FetchOrchestrationMetadata(ctx, id); !errors.Is(err, api.ErrInstanceNotFound) {
		t.Fatalf("after purge: %v, want ErrInstanceNotFound", err)
	}
	if err := cl.PurgeOrchestrationState(ctx, id); !errors.Is(err, api.ErrInstanceNotFound) {
		t.Fatalf("second purge: %v, want ErrInstanceNotFound", err)
	}
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func schedule(t *testing.T, name string) api.InstanceID {
	t.Helper()
	id, err := cl.ScheduleNewOrchestration(testContext(t), name,
		api.WithInstanceID(api.InstanceID(fmt.Sprintf("%s-%d", strings.ToLower(name), time.Now().UnixNano()))))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func runToCompletion(t *testing.T, name string) *api.OrchestrationMetadata {
	t.Helper()
	return waitCompleted(t, schedule(t, name))
}

func waitCompleted(t *testing.T, id api.InstanceID) *api.OrchestrationMetadata {
	t.Helper()
	md, err := cl.WaitForOrchestrationCompletion(testContext(t), id)
	if err != nil {
		t.Fatal(err)
	}
	if md.RuntimeStatus != api.RUNTIME_STATUS_COMPLETED {
		t.Fatalf("%s: status %v (%v), want COMPLETED", id, md.RuntimeStatus, md.FailureDetails)
	}
	return md
}

func waitStatus(t *testing.T, id api.InstanceID, want api.OrchestrationStatus) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		md, err := cl.FetchOrchestrationMetadata(testContext(t), id)
		if err != nil {
			t.Fatal(err)
		}
		if md.RuntimeStatus == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: status %v, want %v", id, md.RuntimeStatus, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func assertOutput(t *testing.T, md *api.OrchestrationMetadata, want any) {
	t.Helper()
	b, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	if md.SerializedOutput != string(b) {
		t.Fatalf("output %s, want %s", md.SerializedOutput, b)
	}
}

func dial(addr string) *client.TaskHubGrpcClient {
	conn, err := grpc.Dial(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		panic(err)
	}
	return client.NewTaskHubGrpcClient(conn, backend.DefaultLogger())
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func waitListening(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("duro did not listen on %s within %v", addr, timeout)
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}
