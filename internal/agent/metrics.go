package agent

import (
	"runtime"
	"time"

	gometrics "github.com/hashicorp/go-metrics/compat"
	gmprom "github.com/hashicorp/go-metrics/compat/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/immutd/immutd/internal/leader"
	"github.com/immutd/immutd/internal/reconcile"
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

	fleetInstances   *prometheus.GaugeVec
	fleetDesired     *prometheus.GaugeVec
	drifted          *prometheus.GaugeVec
	replacements     *prometheus.CounterVec
	blocked          *prometheus.GaugeVec
	reconcileDur     prometheus.Histogram
	providerCall     *prometheus.HistogramVec
	reloadOK         prometheus.Gauge
	reloadTime       prometheus.Gauge
	reloadFailures   prometheus.Counter
	isLeader         prometheus.Gauge
	intentsOpen      prometheus.Gauge
	intentsFinished  *prometheus.CounterVec
	desiredGen       prometheus.Gauge
	configDiverged   prometheus.Gauge
	autopilotHealthy prometheus.Gauge
	failureTolerance prometheus.Gauge
	imageRefMoved    *prometheus.GaugeVec
	passes           *prometheus.CounterVec
	dataDirWritable  prometheus.Gauge
	dataDirFree      prometheus.Gauge
	trafficInstances *prometheus.GaugeVec
	trafficStep      *prometheus.HistogramVec
	clusterStorm     prometheus.Gauge
	pauses           *prometheus.GaugeVec
	quarantineMax    *prometheus.GaugeVec
	reverted         *prometheus.GaugeVec
	rolloutPaused    *prometheus.GaugeVec
}

// trafficStates are the traffic states immutd_traffic_instances exports.
var trafficStates = []reconcile.TrafficState{reconcile.TrafficPending, reconcile.TrafficAdmitting, reconcile.TrafficAdmitted,
	reconcile.TrafficDraining, reconcile.TrafficDrained}

func newMetrics() *metrics {
	reg := prometheus.NewRegistry()
	m := &metrics{
		reg: reg,
		fleetInstances: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "immutd_fleet_instances",
			Help: "Instances per fleet and state, as the leader sees them (exported by the leader only)."}, []string{"fleet", "state"}),
		fleetDesired: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "immutd_fleet_desired_instances",
			Help: "Desired size of each fleet in the committed desired state."}, []string{"fleet"}),
		drifted: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "immutd_instances_drifted",
			Help: "Instances that differ from their golden image, by kind (leader only)."}, []string{"fleet", "kind"}),
		replacements: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "immutd_replacements_total",
			Help: "Instances terminated to be replaced, by reason (leader only)."}, []string{"fleet", "reason"}),
		blocked: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "immutd_remediation_blocked",
			Help: "1 while remediation of a fleet is held back, by cause (leader only)."}, []string{"fleet", "cause"}),
		reconcileDur: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "immutd_reconcile_duration_seconds",
			Help: "Duration of one reconcile pass: observe, plan, journal and publish.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		providerCall: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "immutd_provider_call_duration_seconds",
			Help: "Duration of provider launch and terminate calls until their outcome is journaled.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)}, []string{"provider", "kind", "outcome"}),
		reloadOK: prometheus.NewGauge(prometheus.GaugeOpts{Name: "immutd_config_last_reload_successful",
			Help: "1 if the last load of the fleet files succeeded."}),
		reloadTime: prometheus.NewGauge(prometheus.GaugeOpts{Name: "immutd_config_last_reload_success_timestamp_seconds",
			Help: "Time of the last successful load of the fleet files."}),
		reloadFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: "immutd_config_reload_failures_total",
			Help: "Rejected loads of the fleet files."}),
		isLeader: prometheus.NewGauge(prometheus.GaugeOpts{Name: "immutd_cluster_is_leader",
			Help: "1 if this agent is the raft leader."}),
		intentsOpen: prometheus.NewGauge(prometheus.GaugeOpts{Name: "immutd_intents_open",
			Help: "Journaled provider actions not yet confirmed."}),
		intentsFinished: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "immutd_intents_finished_total",
			Help: "Provider actions finished by this agent, by kind and outcome."}, []string{"kind", "outcome"}),
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
	reg.MustRegister(m.trafficInstances, m.trafficStep)
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
	reg.MustRegister(m.clusterStorm, m.pauses, m.quarantineMax, m.reverted, m.rolloutPaused)
	reg.MustRegister(m.fleetInstances, m.fleetDesired, m.drifted, m.replacements, m.blocked, m.reconcileDur, m.providerCall,
		m.reloadOK, m.reloadTime, m.reloadFailures, m.isLeader, m.intentsOpen, m.intentsFinished, m.desiredGen, buildInfo,
		m.configDiverged, m.autopilotHealthy, m.failureTolerance, m.imageRefMoved, m.dataDirWritable, m.dataDirFree, m.passes,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// bridgeRaftMetrics routes hashicorp/raft's go-metrics (raft, bolt store)
// into the registry as immutd_raft_* and immutd_raft_boltdb_*.
func (m *metrics) bridgeRaftMetrics() error {
	sink, err := gmprom.NewPrometheusSinkFrom(gmprom.PrometheusOpts{Registerer: m.reg, Expiration: 5 * time.Minute})
	if err != nil {
		return err
	}
	cfg := gometrics.DefaultConfig("immutd")
	cfg.EnableHostname = false
	cfg.EnableHostnameLabel = false
	cfg.EnableRuntimeMetrics = false
	cfg.EnableServiceLabel = false
	_, err = gometrics.NewGlobal(cfg, sink)
	return err
}

// initFleet makes every series of a fleet exist, so alerts see zeros
// rather than gaps and increase() counts the first replacement.
func (m *metrics) initFleet(fleet string) {
	for _, r := range replacementReasons {
		m.replacements.WithLabelValues(fleet, string(r))
	}
}

// forgetFleet removes a fleet's series.
func (m *metrics) forgetFleet(fleet string) {
	for _, v := range []*prometheus.GaugeVec{m.fleetInstances, m.fleetDesired, m.drifted, m.blocked, m.imageRefMoved, m.pauses, m.quarantineMax, m.reverted, m.rolloutPaused} {
		v.DeletePartialMatch(prometheus.Labels{"fleet": fleet})
	}
	m.replacements.DeletePartialMatch(prometheus.Labels{"fleet": fleet})
}

// clearLeaderSeries drops the series only a leader exports.
func (m *metrics) clearLeaderSeries() {
	m.fleetInstances.Reset()
	m.drifted.Reset()
	m.blocked.Reset()
	m.imageRefMoved.Reset()
	m.quarantineMax.Reset()
	m.autopilotHealthy.Set(0)
	m.failureTolerance.Set(0)
}

func (m *metrics) publish(st reconcile.FleetStatus) {
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
	for _, c := range reconcile.Causes {
		v := 0.0
		if on[c] {
			v = 1
		}
		m.blocked.WithLabelValues(st.Fleet, string(c)).Set(v)
	}
	m.quarantineMax.WithLabelValues(st.Fleet).Set(float64(st.QuarantineMax))
}
