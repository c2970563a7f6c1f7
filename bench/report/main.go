// Command report turns bench/results/*.json (written by bench/driver) into bench/RESULTS.md and
// bench/results.svg. It is run by bench/run.sh; run it by hand to redraw after editing results.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// result is the part of the driver's JSON the report reads.
type result struct {
	Name, Sidecar, Scenario string
	Driver                  string // "rust-sdk" from bench/rust-driver; empty from the Go driver
	N, M, Concurrency       int
	Workers                 int // worker connections (0 in files written before the driver had -workers: 1)
	Completed, Failed       int
	WallSeconds             float64                              `json:"wall_seconds"`
	OrchPerSec              float64                              `json:"orchestrations_per_sec"`
	WorkItemsPerSec         float64                              `json:"work_items_per_sec"`
	WorkItems               int64                                `json:"work_items"`
	WorkItemsPerWorker      []int64                              `json:"work_items_per_worker"` // written with -workers > 1
	StartPerSec             float64                              `json:"start_per_sec"`
	LatencyMs               struct{ P50, P95, P99, Max float64 } `json:"latency_ms"`
	PeakRSS                 int64                                `json:"sidecar_peak_rss_bytes"`
	WaitingRSS              int64                                `json:"sidecar_rss_waiting_bytes"`
	IdleCPU                 float64                              `json:"sidecar_idle_cpu_seconds"`
	IdleWindow              float64                              `json:"idle_window_seconds"`
	CPU                     float64                              `json:"sidecar_cpu_seconds"`
	RunqueueWait            float64                              `json:"sidecar_runqueue_wait_seconds"`
	DriverCPU               float64                              `json:"driver_cpu_seconds"`
	EntityOps               int64                                `json:"entity_operations"`  // Rust driver, entity scenarios
	OpsPerSec               float64                              `json:"operations_per_sec"` // Rust driver, entity scenarios
}

const ref, duro = "dtgo", "duro"

var order = []string{"sequence", "fanout", "timers", "events", "start-burst", "latency", "waiting"}

func main() {
	dir := flag.String("results", "bench/results", "directory of the driver's JSON files")
	md := flag.String("md", "bench/RESULTS.md", "Markdown table to write")
	svg := flag.String("svg", "bench/results.svg", "bar chart to write")
	date := flag.String("date", "", "date of the run")
	machine := flag.String("machine", "", "machine description")
	commit := flag.String("commit", "", "commit measured")
	load := flag.String("load", "", "load average before the run")
	notes := flag.String("notes", "", "Markdown appended as written (the analysis of what bounds the figures)")
	flag.Parse()

	files, err := filepath.Glob(filepath.Join(*dir, "*.json"))
	if err != nil || len(files) == 0 {
		log.Fatalf("no results in %s", *dir)
	}
	runs := map[string]map[string]*result{}
	var rust []*result // written by bench/rust-driver (the Rust SDK as client and worker): their own table
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			log.Fatal(err)
		}
		var r result
		if err := json.Unmarshal(b, &r); err != nil {
			log.Fatalf("%s: %v", f, err)
		}
		if r.Driver == "rust-sdk" {
			rust = append(rust, &r)
			continue
		}
		if runs[r.Name] == nil {
			runs[r.Name] = map[string]*result{}
		}
		runs[r.Name][r.Sidecar] = &r
	}
	names := make([]string, 0, len(runs))
	for n := range runs {
		names = append(names, n)
	}
	rank := func(n string) int {
		if i := slices.Index(order, n); i >= 0 {
			return i
		}
		return len(order)
	}
	slices.SortFunc(names, func(a, b string) int {
		if d := rank(a) - rank(b); d != 0 {
			return d
		}
		return strings.Compare(a, b)
	})

	// scale-* runs repeat one workload with more worker connections; they have their own section and
	// stay out of the comparison tables, the targets and the chart.
	var compared, scale []string
	for _, n := range names {
		if isScale(n) {
			scale = append(scale, n)
		} else {
			compared = append(compared, n)
		}
	}

	text := markdown(compared, scale, runs, *date, *machine, *commit, *load)
	if len(rust) > 0 {
		text += rustTable(rust)
	}
	if *notes != "" {
		extra, err := os.ReadFile(*notes)
		must(err)
		text += "\n" + string(extra)
	}
	must(os.WriteFile(*md, []byte(text), 0o644))
	must(os.WriteFile(*svg, []byte(chart(compared, runs)), 0o644))
}

func isScale(name string) bool { return strings.HasPrefix(name, "scale-") }

func workload(r *result) string {
	var w string
	switch r.Scenario {
	case "sequence":
		w = fmt.Sprintf("%d × %d chained activities", r.N, r.M)
	case "fanout":
		w = fmt.Sprintf("%d × %d parallel activities", r.N, r.M)
	case "timers":
		w = fmt.Sprintf("%d × %d sequential timers", r.N, r.M)
	case "events":
		w = fmt.Sprintf("%d × wait for a raised event", r.N)
	case "start-burst":
		w = fmt.Sprintf("%d starts (%d activity each), then drain", r.N, r.M)
	case "waiting":
		w = fmt.Sprintf("%d waiting on events, then raise all", r.N)
	case "entities":
		w = fmt.Sprintf("%d × %d sequential entity calls", r.N, r.M)
	case "entity-signals":
		w = fmt.Sprintf("%d client signals over %d entities", r.N, r.M)
	}
	return fmt.Sprintf("%s; %d in flight", w, r.Concurrency)
}

func markdown(names, scale []string, runs map[string]map[string]*result, date, machine, commit, load string) string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("# Benchmark results\n\n")
	p("Written by `bash bench/run.sh` (see [README.md](README.md)). Date: %s. Machine: %s. Commit: `%s`. Load average before the run: %s.\n\n", date, machine, commit, load)
	p("Both sidecars are driven by the same program (`bench/driver`, the official durabletask-go SDK as client and worker) on the same machine; each run starts its sidecar on a fresh SQLite file (WAL, `synchronous=FULL`). durabletask-go is `github.com/microsoft/durabletask-go` v0.6.0 with its SQLite backend, wired like its own `main.go` (one orchestration and one activity work item at a time). The Workload column gives durabletask-go's size; Duro runs the same workload 5 times as often (`DURO_N_SCALE` in `run.sh`: at these sizes its runs would last 0.1–0.3 s, too short for a steady rate), and rates are per second either way. Duro's SQLite commits are durable before anything is acknowledged (WAL synced by its syncer thread; see ARCHITECTURE.md, \"Pipelined commits\").\n\n")
	p("> **Caveat**: the driver, its SDK worker and the sidecar share the machine's cores, and figures taken while other builds or tests run are noisy. Compare runs made on a quiet machine; read ratios, not absolute numbers.\n\n")

	p("## Throughput\n\n")
	p("| Run | Workload | durabletask-go orch/s | Duro orch/s | Duro ÷ durabletask-go | durabletask-go work items/s | Duro work items/s |\n")
	p("|---|---|--:|--:|--:|--:|--:|\n")
	for _, n := range names {
		a, d := runs[n][ref], runs[n][duro]
		r0 := first(a, d)
		p("| %s | %s | %s | %s | %s | %s | %s |\n", n, workload(r0),
			cell(a, func(r *result) string { return num(r.OrchPerSec) }),
			cell(d, func(r *result) string { return num(r.OrchPerSec) }),
			ratio(a, d),
			cell(a, func(r *result) string { return num(r.WorkItemsPerSec) }),
			cell(d, func(r *result) string { return num(r.WorkItemsPerSec) }))
	}

	p("\n## Latency and resources\n\n")
	p("End-to-end latency per orchestration as the client sees it (start call → completion returned; for `waiting`, RaiseEvent → completion). Peak RSS is the sidecar's VmHWM; CPU is the sidecar's utime+stime during the run, and run-queue wait the time its threads were ready to run but had no core (a measure of how busy the machine was).\n\n")
	p("| Run | durabletask-go p50 / p95 / p99 ms | Duro p50 / p95 / p99 ms | durabletask-go peak RSS MiB | Duro peak RSS MiB | durabletask-go CPU s (run-queue wait) | Duro CPU s (run-queue wait) |\n")
	p("|---|--:|--:|--:|--:|--:|--:|\n")
	lat := func(r *result) string {
		return fmt.Sprintf("%s / %s / %s", num(r.LatencyMs.P50), num(r.LatencyMs.P95), num(r.LatencyMs.P99))
	}
	rss := func(r *result) string { return mib(r.PeakRSS) }
	cpu := func(r *result) string { return fmt.Sprintf("%.2f (%.2f)", r.CPU, r.RunqueueWait) }
	for _, n := range names {
		a, d := runs[n][ref], runs[n][duro]
		p("| %s | %s | %s | %s | %s | %s | %s |\n", n, cell(a, lat), cell(d, lat), cell(a, rss), cell(d, rss), cell(a, cpu), cell(d, cpu))
	}

	p("\n## Targets (measured, not asserted)\n\n")
	p("Issue 21's targets for the runs of this page (Go SDK driver); the Rust SDK driver's targets are under its table, idle instances and history length in their own sections below.\n\n")
	p("| Target | Measured | Met |\n|---|---|---|\n")
	for _, n := range names {
		a, d := runs[n][ref], runs[n][duro]
		if n == "waiting" {
			continue // no peer baseline
		}
		if ok(a) && ok(d) && a.OrchPerSec > 0 {
			x := d.OrchPerSec / a.OrchPerSec
			p("| %s: Duro ≥ 30× durabletask-go orch/s | %.1f× | %s |\n", n, x, yes(x >= 30))
		}
	}
	if d := runs["latency"][duro]; ok(d) {
		p("| one-activity orchestration, 1 in flight (Go SDK worker): p50 < 1 ms | %s ms | %s |\n", num(d.LatencyMs.P50), yes(d.LatencyMs.P50 < 1))
		p("| one-activity orchestration, 1 in flight (Go SDK worker): p99 < 3 ms | %s ms | %s |\n", num(d.LatencyMs.P99), yes(d.LatencyMs.P99 < 3))
	}
	best := 0.0
	for _, n := range []string{"sequence", "fanout"} {
		if d := runs[n][duro]; ok(d) && d.WorkItemsPerSec > best {
			best = d.WorkItemsPerSec
		}
	}
	if best > 0 {
		p("| sequence/fanout with the Go SDK driver: ≥ 15,000 work items/s | %.0f | %s |\n", best, yes(best >= 15000))
	}
	if d := runs["waiting"][duro]; ok(d) && d.WaitingRSS > 0 {
		p("| %d instances waiting on events: sidecar RSS < 64 MiB | %s MiB (peak %s MiB) | %s |\n", d.N, mib(d.WaitingRSS), mib(d.PeakRSS), yes(d.WaitingRSS < 64<<20))
		if d.IdleWindow > 0 {
			// procfs counts CPU in 10 ms ticks: one tick over the window is the resolution.
			p("| %d instances waiting on events cost no CPU | %.2f s sidecar CPU over %.0f s idle | %s |\n", d.N, d.IdleCPU, d.IdleWindow, yes(d.IdleCPU <= 0.01))
		}
	}
	p("\n![orchestrations per second](results.svg)\n")
	if len(scale) > 0 {
		scaling(p, scale, runs)
	}
	return b.String()
}

// scaling writes the scale-* runs: one workload, the driver's -workers at 1, 2, 4, ….
func scaling(p func(string, ...any), names []string, runs map[string]map[string]*result) {
	var rs []*result
	for _, n := range names {
		for _, s := range []string{ref, duro} {
			if r := runs[n][s]; r != nil {
				rs = append(rs, r)
			}
		}
	}
	workers := func(r *result) int { return max(1, r.Workers) }
	slices.SortStableFunc(rs, func(a, b *result) int {
		if a.Sidecar != b.Sidecar { // durabletask-go first, as in the tables above
			return strings.Compare(a.Sidecar, b.Sidecar)
		}
		if a.Concurrency != b.Concurrency {
			return a.Concurrency - b.Concurrency
		}
		return workers(a) - workers(b)
	})

	p("\n## Scaling\n\n")
	p("Runs `scale-*`: one workload (scenario `M` as in the table above) with more orchestrations in flight (`-concurrency`), then more worker connections (`-workers`: that many gRPC connections, each with its own SDK work-item listener, registry and executor, all in the one driver process). ÷ first row: orch/s over that of the same sidecar's first row (the fewest in flight, one connection). Work items per connection: the orchestrator turns and activity executions each connection's worker ran. CPU s: utime+stime during the run (sidecar: run-queue wait in parentheses). Cores busy: (sidecar CPU s + driver CPU s) ÷ wall s; both processes share the machine's cores (see the header).\n\n")
	p("| Sidecar | Workload | In flight | Worker connections | orch/s | ÷ first row | work items/s | work items per connection | sidecar CPU s (run-queue wait) | driver CPU s | wall s | cores busy |\n")
	p("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, r := range rs {
		rel := "—"
		for _, b := range rs {
			if b.Sidecar == r.Sidecar && ok(r) && ok(b) && b.OrchPerSec > 0 {
				rel = fmt.Sprintf("%.2f×", r.OrchPerSec/b.OrchPerSec)
				break // rs is sorted: the first of this sidecar is its baseline
			}
		}
		per := fmt.Sprint(r.WorkItems) // one connection ran them all
		if len(r.WorkItemsPerWorker) > 0 {
			parts := make([]string, len(r.WorkItemsPerWorker))
			for i, v := range r.WorkItemsPerWorker {
				parts[i] = fmt.Sprint(v)
			}
			per = strings.Join(parts, " / ")
		}
		p("| %s | %s | %d | %d | %s | %s | %s | %s | %s | %s | %s | %s |\n", sideName(r.Sidecar), strings.Split(workload(r), ";")[0], r.Concurrency, workers(r),
			cell(r, func(r *result) string { return num(r.OrchPerSec) }),
			rel,
			cell(r, func(r *result) string { return num(r.WorkItemsPerSec) }),
			cell(r, func(*result) string { return per }),
			cell(r, func(r *result) string { return fmt.Sprintf("%.2f (%.2f)", r.CPU, r.RunqueueWait) }),
			cell(r, func(r *result) string { return fmt.Sprintf("%.2f", r.DriverCPU) }),
			cell(r, func(r *result) string { return fmt.Sprintf("%.2f", r.WallSeconds) }),
			cell(r, func(r *result) string {
				if r.WallSeconds <= 0 {
					return "—"
				}
				return fmt.Sprintf("%.2f", (r.CPU+r.DriverCPU)/r.WallSeconds)
			}))
	}
}

// rustTable writes the runs of bench/rust-driver: the same sidecar driven by the Rust SDK (client and
// worker in one process), in the order of bench/rust.sh's plan (by name otherwise).
func rustTable(rs []*result) string {
	slices.SortStableFunc(rs, func(a, b *result) int { return strings.Compare(a.Name, b.Name) })
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("\n## Rust SDK driver\n\n")
	p("Runs of `bash bench/rust.sh`: Duro driven by `bench/rust-driver` (`duro-bench`, the Rust SDK `duro-sdk` as client and worker in one process) instead of the Go SDK. Work items: orchestrator turns + activity executions + entity operations run by the worker. Entity ops/s: entity operations checked ÷ wall s (`entities`: calls from orchestrations; `entity-signals`: client signals, each counter read until it holds its sum). Latency: per orchestration, start → completion returned (`entity-signals`: per signal call). Sidecar µs per work item: sidecar CPU ÷ work items. Cores busy: (sidecar + driver CPU s) ÷ wall s.\n\n")
	p("| Run | Workload | Worker connections | orch/s | work items/s | entity ops/s | p50 / p95 / p99 ms | sidecar CPU s (run-queue wait) | sidecar µs per work item | driver CPU s | cores busy |\n")
	p("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, r := range rs {
		ops := "—"
		if r.OpsPerSec > 0 {
			ops = num(r.OpsPerSec)
		}
		perItem, busy := "—", "—"
		if r.WorkItems > 0 {
			perItem = fmt.Sprintf("%.0f", r.CPU/float64(r.WorkItems)*1e6)
		}
		if r.WallSeconds > 0 {
			busy = fmt.Sprintf("%.2f", (r.CPU+r.DriverCPU)/r.WallSeconds)
		}
		p("| %s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.Name, workload(r), max(1, r.Workers),
			cell(r, func(r *result) string {
				if r.Scenario == "entity-signals" { // no orchestrations
					return "—"
				}
				return num(r.OrchPerSec)
			}),
			cell(r, func(r *result) string { return num(r.WorkItemsPerSec) }),
			cell(r, func(*result) string { return ops }),
			cell(r, func(r *result) string {
				return fmt.Sprintf("%s / %s / %s", num(r.LatencyMs.P50), num(r.LatencyMs.P95), num(r.LatencyMs.P99))
			}),
			cell(r, func(r *result) string { return fmt.Sprintf("%.2f (%.2f)", r.CPU, r.RunqueueWait) }),
			cell(r, func(*result) string { return perItem }),
			cell(r, func(r *result) string { return fmt.Sprintf("%.2f", r.DriverCPU) }),
			cell(r, func(*result) string { return busy }))
	}
	best, bestName := 0.0, ""
	for _, r := range rs {
		if ok(r) && (r.Scenario == "sequence" || r.Scenario == "fanout") && r.M > 1 && r.WorkItemsPerSec > best {
			best, bestName = r.WorkItemsPerSec, r.Name
		}
	}
	p("\n| Target (Rust SDK driver) | Measured | Met |\n|---|---|---|\n")
	if best > 0 {
		p("| sequence/fanout: ≥ 25,000 durable work items/s | %.0f (%s) | %s |\n", best, bestName, yes(best >= 25000))
	}
	for _, r := range rs {
		if r.Name == "latency" && ok(r) {
			p("| one-activity orchestration, 1 in flight: p50 < 1 ms | %s ms | %s |\n", num(r.LatencyMs.P50), yes(r.LatencyMs.P50 < 1))
			p("| one-activity orchestration, 1 in flight: p99 < 3 ms | %s ms | %s |\n", num(r.LatencyMs.P99), yes(r.LatencyMs.P99 < 3))
		}
	}
	return b.String()
}

func sideName(s string) string {
	switch s {
	case ref:
		return "durabletask-go"
	case duro:
		return "Duro"
	}
	return s
}

func first(rs ...*result) *result {
	for _, r := range rs {
		if r != nil {
			return r
		}
	}
	return nil
}

func ok(r *result) bool { return r != nil && r.Failed == 0 && r.Completed == r.N }

func cell(r *result, f func(*result) string) string {
	switch {
	case r == nil:
		return "—"
	case !ok(r):
		return fmt.Sprintf("FAILED (%d of %d)", r.Failed, r.N)
	}
	return f(r)
}

func ratio(a, d *result) string {
	if !ok(a) || !ok(d) || a.OrchPerSec == 0 {
		return "—"
	}
	return fmt.Sprintf("**%.1f×**", d.OrchPerSec/a.OrchPerSec)
}

func num(x float64) string {
	switch {
	case x >= 100:
		return fmt.Sprintf("%.0f", x)
	case x >= 10:
		return fmt.Sprintf("%.1f", x)
	}
	return fmt.Sprintf("%.2f", x)
}

func mib(b int64) string { return fmt.Sprintf("%.1f", float64(b)/(1<<20)) }

func yes(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// chart draws orchestrations/s per run as grouped bars on a log scale (the two sidecars differ by
// orders of magnitude).
func chart(names []string, runs map[string]map[string]*result) string {
	const w, h, left, right, top, bottom = 760, 390, 70, 20, 50, 70
	type bar struct {
		sidecar, color string
	}
	bars := []bar{{ref, "#8c96a3"}, {duro, "#d9480f"}}
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, n := range names {
		for _, s := range bars {
			if r := runs[n][s.sidecar]; ok(r) && r.OrchPerSec > 0 {
				lo, hi = math.Min(lo, r.OrchPerSec), math.Max(hi, r.OrchPerSec)
			}
		}
	}
	if math.IsInf(lo, 1) {
		lo, hi = 1, 10
	}
	lo, hi = math.Floor(math.Log10(lo)), math.Ceil(math.Log10(hi))
	if hi == lo {
		hi++
	}
	plotH := float64(h - top - bottom)
	y := func(v float64) float64 { return float64(h-bottom) - (math.Log10(v)-lo)/(hi-lo)*plotH }

	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", w, h, w, h)
	p(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	p(`<text x="%d" y="22" font-size="15" font-weight="bold">Orchestrations per second (log scale; higher is better)</text>`+"\n", left)
	for e := lo; e <= hi; e++ {
		yy := y(math.Pow(10, e))
		p(`<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, w-right, yy, yy)
		p(`<text x="%d" y="%.1f" text-anchor="end">%g</text>`+"\n", left-6, yy+4, math.Pow(10, e))
	}
	group := float64(w-left-right) / float64(max(1, len(names)))
	bw := group * 0.32
	for i, n := range names {
		x0 := float64(left) + float64(i)*group + group*0.18
		for j, s := range bars {
			x := x0 + float64(j)*bw
			r := runs[n][s.sidecar]
			if !ok(r) || r.OrchPerSec <= 0 {
				label := "n/a"
				if r != nil {
					label = "failed"
				}
				p(`<text x="%.1f" y="%d" text-anchor="middle" fill="#999">%s</text>`+"\n", x+bw/2, h-bottom-4, label)
				continue
			}
			yy := y(r.OrchPerSec)
			p(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>`+"\n", x, yy, bw-2, float64(h-bottom)-yy, s.color)
			p(`<text x="%.1f" y="%.1f" text-anchor="middle" font-size="10">%s</text>`+"\n", x+bw/2-1, yy-3, num(r.OrchPerSec))
		}
		p(`<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", x0+bw, h-bottom+18, n)
		if a, d := runs[n][ref], runs[n][duro]; ok(a) && ok(d) && a.OrchPerSec > 0 {
			p(`<text x="%.1f" y="%d" text-anchor="middle" font-size="11" fill="#555">%.1f×</text>`+"\n", x0+bw, h-bottom+33, d.OrchPerSec/a.OrchPerSec)
		}
	}
	p(`<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="#333"/>`+"\n", left, w-right, h-bottom, h-bottom)
	for j, s := range bars {
		label := map[string]string{ref: "durabletask-go v0.6.0 (SQLite)", duro: "Duro"}[s.sidecar]
		lx := left + j*260
		p(`<rect x="%d" y="%d" width="12" height="12" fill="%s"/><text x="%d" y="%d">%s</text>`+"\n", lx, h-22, s.color, lx+18, h-12, label)
	}
	p("</svg>\n")
	return b.String()
}

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
