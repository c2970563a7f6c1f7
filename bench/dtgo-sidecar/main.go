// Command dtgo-sidecar runs durabletask-go's own sidecar (its gRPC executor, task hub worker and SQLite
// backend) as the reference that bench/driver compares Duro against. It is our own wiring of the
// library's public API, with the same defaults as the upstream main.go (one orchestration and one
// activity work item at a time) unless -parallelism says otherwise.
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/microsoft/durabletask-go/backend"
	"github.com/microsoft/durabletask-go/backend/sqlite"
	"google.golang.org/grpc"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:4001", "gRPC listen address")
	db := flag.String("db", "dtgo.db", "SQLite file (created if missing)")
	journal := flag.String("journal", "wal", "SQLite journal mode: wal (like Duro) or delete (the library's default)")
	parallelism := flag.Int("parallelism", 1, "work items in flight per worker (orchestrations, activities); upstream default 1")
	verbose := flag.Bool("v", false, "log at info level (default: errors only)")
	flag.Parse()

	// synchronous=FULL is SQLite's default; spelled out so both sidecars are equally durable.
	dsn := "file:" + *db + "?_pragma=busy_timeout(5000)&_pragma=synchronous(FULL)"
	if *journal == "wal" {
		dsn += "&_pragma=journal_mode(WAL)"
	}

	logger := backend.Logger(quietLogger{})
	if *verbose {
		logger = backend.DefaultLogger()
	}

	be := sqlite.NewSqliteBackend(sqlite.NewSqliteOptions(dsn), logger)
	server := grpc.NewServer()
	executor, register := backend.NewGrpcExecutor(be, logger)
	register(server)
	par := backend.WithMaxParallelism(int32(*parallelism))
	hub := backend.NewTaskHubWorker(be,
		backend.NewOrchestrationWorker(be, executor, logger, par),
		backend.NewActivityTaskWorker(be, executor, logger, par),
		logger)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := hub.Start(ctx); err != nil {
		log.Fatalf("start task hub worker: %v", err)
	}
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("listen: %v", err)
	}
	go func() {
		<-ctx.Done()
		server.Stop()
	}()
	log.Printf("durabletask-go sidecar listening on %v (db %s, journal %s, parallelism %d)", lis.Addr(), *db, *journal, *parallelism)
	if err := server.Serve(lis); err != nil {
		log.Fatalf("serve: %v", err)
	}
}

// quietLogger keeps errors and drops the per-work-item info and warning chatter, which would otherwise
// cost the reference sidecar CPU that Duro (run at --log-level warn) does not spend.
type quietLogger struct{}

func (quietLogger) Debug(...any)              {}
func (quietLogger) Debugf(string, ...any)     {}
func (quietLogger) Info(...any)               {}
func (quietLogger) Infof(string, ...any)      {}
func (quietLogger) Warn(...any)               {}
func (quietLogger) Warnf(string, ...any)      {}
func (quietLogger) Error(v ...any)            { log.Print(append([]any{"ERROR: "}, v...)...) }
func (quietLogger) Errorf(f string, v ...any) { log.Printf("ERROR: "+f, v...) }
