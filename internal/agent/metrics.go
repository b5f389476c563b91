package agent

import (
	"context"
	"fmt"
	"maps"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	gometrics "github.com/hashicorp/go-metrics/compat"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"

	"github.com/immutd/immutd/internal/leader"
	"github.com/immutd/immutd/internal/probe"
	"github.com/immutd/immutd/internal/reconcile"
	"github.com/immutd/immutd/internal/state"
)

// Build information, set with -ldflags -X.
var (
	Version  = "dev"
	Revision = "unknown"
)

// replacementReasons are the termination reasons that count as a
// replacement in immutd_replacements_total.
var replacementReasons = []reconcile.Reason{
	reconcile.ReasonUnhealthy, reconcile.ReasonNeverHealthy, reconcile.ReasonExited, reconcile.ReasonGone,
	reconcile.ReasonDriftImage, reconcile.ReasonDriftTemplate, reconcile.ReasonDriftMutated, reconcile.ReasonOrphan,
}

// CauseNoQuorum is reconcile.CauseNoQuorum as a plain string, for the
// metric labels and logs that take one.
const CauseNoQuorum = string(reconcile.CauseNoQuorum)

type metrics struct {
	reg *prometheus.Registry
	// collectors are the collectors registered with reg by newMetrics,
	// for MetricNames.
	collectors []prometheus.Collector

	fleetInstances      *prometheus.GaugeVec
	fleetDesired        *prometheus.GaugeVec
	drifted             *prometheus.GaugeVec
	replacements        *prometheus.CounterVec
	blocked             *prometheus.GaugeVec
	reconcileDur        prometheus.Histogram
	providerCall        *prometheus.HistogramVec
	reloadOK            prometheus.Gauge
	reloadTime          prometheus.Gauge
	reloadFailures      prometheus.Counter
	agentReloadOK       prometheus.Gauge
	agentReloadTime     prometheus.Gauge
	agentReloadFailures prometheus.Counter
	isLeader            prometheus.Gauge
	intentsOpen         prometheus.Gauge
	intentsFinished     *prometheus.CounterVec
	launchFailures      *prometheus.GaugeVec
	desiredGen          prometheus.Gauge
	configDiverged      prometheus.Gauge
	autopilotHealthy    prometheus.Gauge
	failureTolerance    prometheus.Gauge
	imageRefMoved       *prometheus.GaugeVec
	passes              *prometheus.CounterVec
	dataDirWritable     prometheus.Gauge
	dataDirFree         prometheus.Gauge
	trafficInstances    *prometheus.GaugeVec
	trafficStep         *prometheus.HistogramVec
	clusterStorm        prometheus.Gauge
	pauses              *prometheus.GaugeVec
	quarantineMax       *prometheus.GaugeVec
	reverted            *prometheus.GaugeVec
	rolloutPaused       *prometheus.GaugeVec
	raft                *raftCollector
}

// trafficStates are the traffic states immutd_traffic_instances exports.
var trafficStates = []reconcile.TrafficState{reconcile.TrafficPending, reconcile.TrafficAdmitting, reconcile.TrafficAdmitted,
	reconcile.TrafficDraining, reconcile.TrafficDrained}

// register registers collectors with the registry and remembers them.
func (m *metrics) register(cs ...prometheus.Collector) {
	m.reg.MustRegister(cs...)
	m.collectors = append(m.collectors, cs...)
}

func newMetrics() *metrics {
	reg := prometheus.NewRegistry()
	m := &metrics{
		reg: reg,
		fleetInstances: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "immutd_fleet_instances",
			Help: "Instances per fleet and state, as the leader sees them (exported by the leader only)."}, []string{"fleet", "state"}),
		fleetDesired: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "immutd_fleet_desired_instances",
			Help: "Desired size of each fleet in the committed desired state; 0 once the fleet was removed from the fleet files (kept running or draining) or is drained."}, []string{"fleet"}),
		drifted: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "immutd_instances_drifted",
			Help: "Instances that differ from their golden image, by kind (leader only)."}, []string{"fleet", "kind"}),
		replacements: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "immutd_replacements_total",
			Help: "Instances terminated to be replaced, by reason (leader only)."}, []string{"fleet", "reason"}),
		blocked: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "immutd_remediation_blocked",
			Help: "1 while remediation of a fleet is held back, by cause (leader only). launch_backoff stays 1 from the second instance in a row that failed before it became healthy until one becomes healthy, the retries between the waits included."}, []string{"fleet", "cause"}),
		reconcileDur: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "immutd_reconcile_duration_seconds",
			Help: "Duration of one reconcile pass: observe, plan, journal and publish.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		providerCall: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "immutd_provider_call_duration_seconds",
			Help: "Duration of provider launch and terminate calls until their outcome is journaled.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)}, []string{"provider", "kind", "outcome"}),
		reloadOK: prometheus.NewGauge(prometheus.GaugeOpts{Name: "immutd_config_last_reload_successful",
			Help: "1 if the last load of the fleet files succeeded (they are watched: every change is a load)."}),
		reloadTime: prometheus.NewGauge(prometheus.GaugeOpts{Name: "immutd_config_last_reload_success_timestamp_seconds",
			Help: "Time of the last successful load of the fleet files."}),
		reloadFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: "immutd_config_reload_failures_total",
			Help: "Rejected loads of the fleet files."}),
		agentReloadOK: prometheus.NewGauge(prometheus.GaugeOpts{Name: "immutd_agent_config_last_reload_successful",
			Help: "1 if the agent file loaded at the start or at the last reload (SIGHUP) was accepted; 0 when the last reload was rejected and the running configuration stays."}),
		agentReloadTime: prometheus.NewGauge(prometheus.GaugeOpts{Name: "immutd_agent_config_last_reload_success_timestamp_seconds",
			Help: "Time of the last accepted load of the agent file (the start or a reload)."}),
		agentReloadFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: "immutd_agent_config_reload_failures_total",
			Help: "Rejected reloads (SIGHUP) of the agent file."}),
		isLeader: prometheus.NewGauge(prometheus.GaugeOpts{Name: "immutd_cluster_is_leader",
			Help: "1 if this agent is the raft leader."}),
		intentsOpen: prometheus.NewGauge(prometheus.GaugeOpts{Name: "immutd_intents_open",
			Help: "Journaled provider actions not yet confirmed."}),
		intentsFinished: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "immutd_intents_finished_total",
			Help: "Provider actions finished by this agent as leader, by fleet, kind and outcome."}, []string{"fleet", "kind", "outcome"}),
		launchFailures: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "immutd_fleet_launch_failures",
			Help: "Consecutive instances of the fleet that failed before they became healthy (launch error, exit, never healthy), from the replicated state; 0 once one became healthy. It drives the launch backoff and remediation.max_launch_failures."}, []string{"fleet"}),
		desiredGen: prometheus.NewGauge(prometheus.GaugeOpts{Name: "immutd_desired_generation",
			Help: "Committed desired generation."}),
		configDiverged: prometheus.NewGauge(prometheus.GaugeOpts{Name: "immutd_config_diverged",
			Help: "1 when this agent's fleet files differ from the committed desired state (the committed generation is in force)."}),
		autopilotHealthy: prometheus.NewGauge(prometheus.GaugeOpts{Name: "immutd_autopilot_healthy",
			Help: "1 when autopilot considers every server healthy (leader only)."}),
		failureTolerance: prometheus.NewGauge(prometheus.GaugeOpts{Name: "immutd_autopilot_failure_tolerance",
			Help: "How many servers can fail without losing quorum (leader only)."}),
		imageRefMoved: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "immutd_image_ref_moved",
			Help: "1 when a fleet's image reference now resolves to other content than the pinned image (leader only)."}, []string{"fleet"}),
	}
	m.passes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "immutd_reconcile_passes_total",
		Help: "Reconcile passes of the leader by result: ok, resumed (intents were taken over; planning waits for the next pass), error."}, []string{"result"})
	for _, r := range leader.PassResults {
		m.passes.WithLabelValues(string(r))
	}
	m.dataDirWritable = prometheus.NewGauge(prometheus.GaugeOpts{Name: "immutd_data_dir_writable",
		Help: "1 when the agent could write and sync a file in its data directory at the last check (every 5s); raft persists nothing while it is 0."})
	m.dataDirFree = prometheus.NewGauge(prometheus.GaugeOpts{Name: "immutd_data_dir_free_bytes",
		Help: "Free bytes of the file system of the agent's data directory, for unprivileged users."})
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "immutd_build_info",
		Help: "Build information; always 1."}, []string{"version", "revision", "goversion"})
	buildInfo.WithLabelValues(Version, Revision, runtime.Version()).Set(1)
	m.trafficInstances = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "immutd_traffic_instances",
		Help: "Instances of fleets with a traffic gate, by traffic state: pending, admitting, admitted, draining, drained (leader only)."}, []string{"fleet", "state"})
	m.trafficStep = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "immutd_traffic_step_duration_seconds",
		Help:    "Duration of admissions (healthy to confirmed by every backend) and drains (until connections ended or drain_delay, and removal), by outcome.",
		Buckets: prometheus.ExponentialBuckets(0.01, 2, 17)}, []string{"kind", "outcome"})
	m.register(m.trafficInstances, m.trafficStep)
	m.clusterStorm = prometheus.NewGauge(prometheus.GaugeOpts{Name: "immutd_cluster_storm",
		Help: "1 while every fleet with running instances fails at once (a cluster-wide storm: nothing is killed for its health), as the replicated state records it."})
	m.pauses = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "immutd_pauses",
		Help: "Operators' pauses in force, by fleet (\"\" for pauses of every fleet), from the replicated state."}, []string{"fleet"})
	m.quarantineMax = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "immutd_quarantine_max",
		Help: "The most instances of the fleet its remediation.quarantine keeps at once (0: no quarantine); immutd_fleet_instances{state=\"quarantined\"} counts them (leader only)."}, []string{"fleet"})
	m.reverted = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "immutd_fleet_reverted",
		Help: "1 while a revert no operator confirmed makes the fleet run another version than its file's (from the replicated state)."}, []string{"fleet"})
	m.rolloutPaused = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "immutd_rollout_paused",
		Help: "1 while the fleet's rollout is paused, by an operator or because it failed (from the replicated state)."}, []string{"fleet"})
	m.register(m.clusterStorm, m.pauses, m.quarantineMax, m.reverted, m.rolloutPaused)
	m.register(m.fleetInstances, m.fleetDesired, m.drifted, m.replacements, m.blocked, m.reconcileDur, m.providerCall,
		m.reloadOK, m.reloadTime, m.reloadFailures, m.isLeader, m.intentsOpen, m.intentsFinished, m.desiredGen, buildInfo,
		m.configDiverged, m.autopilotHealthy, m.failureTolerance, m.imageRefMoved, m.dataDirWritable, m.dataDirFree, m.passes,
		m.agentReloadOK, m.agentReloadTime, m.agentReloadFailures, m.launchFailures)
	m.raft = newRaftCollector()
	m.register(m.raft)
	m.register(raftTimings.collectors()...)
	m.register(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// initFleet makes every series of a fleet exist, so alerts see zeros
// rather than gaps and increase() counts the first replacement and the
// first failed launch.
func (m *metrics) initFleet(fleet string) {
	for _, r := range replacementReasons {
		m.replacements.WithLabelValues(fleet, string(r))
	}
	for _, o := range []state.Outcome{state.Done, state.Failed} {
		m.intentsFinished.WithLabelValues(fleet, string(state.Launch), string(o))
	}
}

// forgetFleet removes a fleet's series.
func (m *metrics) forgetFleet(fleet string) {
	for _, v := range []*prometheus.GaugeVec{m.fleetInstances, m.fleetDesired, m.drifted, m.blocked, m.imageRefMoved, m.pauses, m.quarantineMax,
		m.reverted, m.rolloutPaused, m.trafficInstances, m.launchFailures} {
		v.DeletePartialMatch(prometheus.Labels{"fleet": fleet})
	}
	m.replacements.DeletePartialMatch(prometheus.Labels{"fleet": fleet})
	m.intentsFinished.DeletePartialMatch(prometheus.Labels{"fleet": fleet})
}

// clearLeaderSeries drops the series only a leader exports.
func (m *metrics) clearLeaderSeries() {
	m.fleetInstances.Reset()
	m.drifted.Reset()
	m.blocked.Reset()
	m.imageRefMoved.Reset()
	m.quarantineMax.Reset()
	m.trafficInstances.Reset()
	m.autopilotHealthy.Set(0)
	m.failureTolerance.Set(0)
}

// publish exports the leader's view of a fleet; launchFailures is the
// fleet's streak of instances that failed before they became healthy.
func (m *metrics) publish(st reconcile.FleetStatus, launchFailures int) {
	for s, n := range st.States {
		m.fleetInstances.WithLabelValues(st.Fleet, string(s)).Set(float64(n))
	}
	for k, n := range st.Drifted {
		m.drifted.WithLabelValues(st.Fleet, k).Set(float64(n))
	}
	traffic := map[reconcile.TrafficState]int{}
	for _, in := range st.Instances {
		traffic[in.Traffic]++
	}
	for _, s := range trafficStates {
		m.trafficInstances.WithLabelValues(st.Fleet, string(s)).Set(float64(traffic[s]))
	}
	on := map[reconcile.Cause]bool{}
	for _, b := range st.Blocked {
		on[b.Cause] = true
	}
	on[reconcile.CauseLaunchBackoff] = on[reconcile.CauseLaunchBackoff] || backingOff(st, on, launchFailures)
	for _, c := range reconcile.Causes {
		v := 0.0
		if on[c] {
			v = 1
		}
		m.blocked.WithLabelValues(st.Fleet, string(c)).Set(v)
	}
	m.quarantineMax.WithLabelValues(st.Fleet).Set(float64(st.QuarantineMax))
}

// launchStoppers are the causes that stop a fleet's launches by
// themselves and have an alert of their own: while one holds, a streak of
// failed launches is not reported as launch_backoff too.
var launchStoppers = []reconcile.Cause{reconcile.CauseLaunchCapped, reconcile.CauseUnconfigured, reconcile.CauseProviderUnreachable,
	reconcile.CauseNoImage, reconcile.CausePaused, reconcile.CauseStorm, reconcile.CauseDisabled}

// backingOff says whether the fleet's launches are in backoff: in a
// streak of failed launches (reconcile.InLaunchStreak, so that an alert on
// the cause does not resolve at every retry), unless a cause that stops
// launches by itself, with an alert of its own, holds. The streak ends
// when an instance becomes healthy, the fleet file changes or an operator
// retries (`immutd fleet retry`).
func backingOff(st reconcile.FleetStatus, on map[reconcile.Cause]bool, launchFailures int) bool {
	if !reconcile.InLaunchStreak(st, launchFailures) {
		return false
	}
	for _, c := range launchStoppers {
		if on[c] {
			return false
		}
	}
	return true
}

// ---- raft ----

// raftStates are the values of immutd_raft_state's state label.
var raftStates = []raft.RaftState{raft.Follower, raft.Candidate, raft.Leader, raft.Shutdown}

// raftCollector exports the raft node's own state on every scrape, from
// the raft API: one series per metric (and per state) for as long as the
// agent runs, so that rules can alert on them.
type raftCollector struct {
	node atomic.Pointer[raft.Raft]

	state, hasLeader, peers, voters, term, lastIndex, commitIndex, appliedIndex, snapshotIndex, fsmPending *prometheus.Desc
	leaderChanges                                                                                          prometheus.Counter
}

func newRaftCollector() *raftCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("immutd_raft_"+name, help, labels, nil)
	}
	return &raftCollector{
		state:         d("state", "1 for the raft state this agent is in (follower, candidate, leader, shutdown), 0 for the others.", "state"),
		hasLeader:     d("has_leader", "1 when this agent knows a raft leader (itself included)."),
		peers:         d("peers", "Servers in the latest raft configuration, this agent included (voters and non-voters)."),
		voters:        d("voters", "Voting servers in the latest raft configuration, this agent included if it votes."),
		term:          d("term", "Current raft term."),
		lastIndex:     d("last_index", "Index of the last raft log entry or snapshot in this agent's stable storage."),
		commitIndex:   d("commit_index", "Highest raft log index known to be committed."),
		appliedIndex:  d("applied_index", "Highest raft log index applied to this agent's state."),
		snapshotIndex: d("last_snapshot_index", "Raft log index of this agent's latest snapshot (0: none yet)."),
		fsmPending:    d("fsm_pending", "Committed raft log entries waiting to be applied to this agent's state."),
		leaderChanges: prometheus.NewCounter(prometheus.CounterOpts{Name: "immutd_raft_leader_changes_total",
			Help: "Times this agent learned of a new raft leader (an election won, by it or another server) since it started."}),
	}
}

func (c *raftCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.state, c.hasLeader, c.peers, c.voters, c.term, c.lastIndex, c.commitIndex, c.appliedIndex, c.snapshotIndex, c.fsmPending} {
		ch <- d
	}
	c.leaderChanges.Describe(ch)
}

func (c *raftCollector) Collect(ch chan<- prometheus.Metric) {
	c.leaderChanges.Collect(ch)
	r := c.node.Load()
	if r == nil {
		return // raft is not open yet
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	s := r.State()
	for _, x := range raftStates {
		gauge(c.state, boolGauge(s == x), strings.ToLower(x.String()))
	}
	_, leaderID := r.LeaderWithID()
	gauge(c.hasLeader, boolGauge(leaderID != ""))
	if f := r.GetConfiguration(); f.Error() == nil {
		servers := f.Configuration().Servers
		voters := 0
		for _, srv := range servers {
			if srv.Suffrage == raft.Voter {
				voters++
			}
		}
		gauge(c.peers, float64(len(servers)))
		gauge(c.voters, float64(voters))
	}
	gauge(c.term, float64(r.CurrentTerm()))
	gauge(c.lastIndex, float64(r.LastIndex()))
	gauge(c.commitIndex, float64(r.CommitIndex()))
	gauge(c.appliedIndex, float64(r.AppliedIndex()))
	stats := r.Stats()
	for d, key := range map[*prometheus.Desc]string{c.snapshotIndex: "last_snapshot_index", c.fsmPending: "fsm_pending"} {
		if v, err := strconv.ParseUint(stats[key], 10, 64); err == nil {
			gauge(d, float64(v))
		}
	}
}

// follow exports r's state and counts its leader changes until ctx ends.
func (c *raftCollector) follow(ctx context.Context, r *raft.Raft) error {
	c.node.Store(r)
	ch := make(chan raft.Observation, 16)
	obs := raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	r.RegisterObserver(obs)
	defer r.DeregisterObserver(obs)
	// A leader elected before the observer was registered counts once; its
	// observation, if it comes after all, does not count again.
	_, last := r.LeaderWithID()
	if last != "" {
		c.leaderChanges.Inc()
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case o := <-ch:
			lo, _ := o.Data.(raft.LeaderObservation)
			if lo.LeaderID != "" && lo.LeaderID != last {
				c.leaderChanges.Inc()
			}
			last = lo.LeaderID
		}
	}
}

// raftTimings receives what hashicorp/raft and raft-boltdb measure through
// go-metrics (process-wide: go-metrics has one global sink) and exports
// the timings and counts operators need as Prometheus histograms in
// seconds and counters: every series exists from the start and never
// expires. Everything else raft sends is dropped.
var raftTimings = newRaftSink()

// raftTimer is one go-metrics timer (or sample in milliseconds) exported
// as a histogram in seconds.
type raftTimer struct {
	key, name, help string
	buckets         []float64
}

var raftTimers = []raftTimer{
	{"raft.commitTime", "immutd_raft_commit_duration_seconds",
		"Time from the leader dispatching a raft log entry to its commit by a majority (leader only).", prometheus.ExponentialBuckets(0.0005, 2, 16)},
	{"raft.fsm.apply", "immutd_raft_fsm_apply_duration_seconds",
		"Time to apply one committed raft log entry to the agent's state; the _count is the number of entries applied.", prometheus.ExponentialBuckets(0.00005, 2, 16)},
	{"raft.leader.lastContact", "immutd_raft_leader_last_contact_seconds",
		"How long ago the leader last heard from a follower, sampled at every leader lease check (leader only).", prometheus.ExponentialBuckets(0.001, 2, 16)},
	{"raft.snapshot.takeSnapshot", "immutd_raft_snapshot_duration_seconds",
		"Time to take and persist one raft snapshot.", prometheus.ExponentialBuckets(0.001, 2, 16)},
	{"raft.boltdb.storeLogs", "immutd_raft_boltdb_store_logs_duration_seconds",
		"Time to write a batch of raft log entries to raft.db, sync included.", prometheus.ExponentialBuckets(0.0005, 2, 16)},
}

// raftCounters are go-metrics counters exported as Prometheus counters.
var raftCounters = []struct{ key, name, help string }{
	{"raft.apply", "immutd_raft_apply_total", "Commands this agent submitted to raft as leader."},
}

type raftSink struct {
	once     sync.Once
	timers   map[string]prometheus.Histogram
	counters map[string]prometheus.Counter
	all      []prometheus.Collector
}

func newRaftSink() *raftSink {
	s := &raftSink{timers: map[string]prometheus.Histogram{}, counters: map[string]prometheus.Counter{}}
	for _, t := range raftTimers {
		h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: t.name, Help: t.help, Buckets: t.buckets})
		s.timers[t.key] = h
		s.all = append(s.all, h)
	}
	for _, c := range raftCounters {
		ctr := prometheus.NewCounter(prometheus.CounterOpts{Name: c.name, Help: c.help})
		s.counters[c.key] = ctr
		s.all = append(s.all, ctr)
	}
	return s
}

func (s *raftSink) collectors() []prometheus.Collector { return s.all }

// install makes the sink go-metrics' global sink (once per process).
func (s *raftSink) install() (err error) {
	s.once.Do(func() {
		cfg := gometrics.DefaultConfig("")
		cfg.EnableHostname = false
		cfg.EnableHostnameLabel = false
		cfg.EnableRuntimeMetrics = false
		cfg.EnableServiceLabel = false
		_, err = gometrics.NewGlobal(cfg, s)
	})
	return err
}

func (s *raftSink) SetGauge([]string, float32)                              {}
func (s *raftSink) SetGaugeWithLabels([]string, float32, []gometrics.Label) {}
func (s *raftSink) EmitKey([]string, float32)                               {}
func (s *raftSink) IncrCounter(key []string, val float32)                   { s.IncrCounterWithLabels(key, val, nil) }
func (s *raftSink) AddSample(key []string, val float32)                     { s.AddSampleWithLabels(key, val, nil) }
func (s *raftSink) IncrCounterWithLabels(key []string, val float32, _ []gometrics.Label) {
	if c := s.counters[strings.Join(key, ".")]; c != nil && val > 0 {
		c.Add(float64(val))
	}
}

// AddSampleWithLabels takes timers (go-metrics measures them in
// milliseconds) and samples in milliseconds.
func (s *raftSink) AddSampleWithLabels(key []string, val float32, _ []gometrics.Label) {
	if h := s.timers[strings.Join(key, ".")]; h != nil {
		h.Observe(float64(val) / 1000)
	}
}

// bridgeRaftMetrics routes hashicorp/raft's go-metrics (raft, bolt store)
// into raftTimings.
func (m *metrics) bridgeRaftMetrics() error { return raftTimings.install() }

// ---- names ----

// MetricNames lists the name of every series an agent can export on
// /metrics (a histogram as its _bucket, _sum and _count series, a
// summary as itself, _sum and _count), whether or not it has any series
// yet, sorted: for checks of dashboards and alert rules against the real
// names.
func MetricNames() ([]string, error) {
	m := newMetrics()
	probe.New(probe.Options{Registerer: m.reg})
	names := map[string]bool{}
	add := func(name string, t dto.MetricType) {
		switch t {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			names[name+"_bucket"], names[name+"_sum"], names[name+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			names[name], names[name+"_sum"], names[name+"_count"] = true, true, true
		default:
			names[name] = true
		}
	}
	families, err := m.reg.Gather()
	if err != nil {
		return nil, err
	}
	for _, f := range families {
		add(f.GetName(), f.GetType())
	}
	// Vectors without series are not gathered: their names come from
	// their descriptions.
	for _, c := range m.collectors {
		var t dto.MetricType
		switch c.(type) {
		case *prometheus.HistogramVec, prometheus.Histogram:
			t = dto.MetricType_HISTOGRAM
		case *prometheus.SummaryVec, prometheus.Summary:
			t = dto.MetricType_SUMMARY
		case *prometheus.CounterVec, prometheus.Counter:
			t = dto.MetricType_COUNTER
		case *prometheus.GaugeVec, prometheus.Gauge, *raftCollector:
			t = dto.MetricType_GAUGE
		default:
			continue // gathered above
		}
		descs := make(chan *prometheus.Desc, 64)
		go func() { c.Describe(descs); close(descs) }()
		for d := range descs {
			match := fqNameRE.FindStringSubmatch(d.String())
			if match == nil {
				return nil, fmt.Errorf("agent: no metric name in %s", d)
			}
			add(match[1], t)
		}
	}
	return slices.Sorted(maps.Keys(names)), nil
}

// fqNameRE takes the name out of a prometheus.Desc's String.
var fqNameRE = regexp.MustCompile(`^Desc\{fqName: "([a-zA-Z_:][a-zA-Z0-9_:]*)"`)
