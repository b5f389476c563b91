package probe

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Indexes into a kind's observers.
const (
	resultIndexSuccess = 0
	resultIndexFailure = 1
)

// durationBuckets span a loopback probe (sub-millisecond) to a probe that
// ran into a multi-second timeout.
var durationBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// newDurationMetric creates immutd_probe_duration_seconds, registers it
// with reg unless reg is nil, and returns its observers by kind and
// result, so that recording a probe does no label lookup. Every kind's
// series exist from the start. When reg already holds the metric (two
// probers on one registry), the registered one is used.
func newDurationMetric(reg prometheus.Registerer, log *zap.Logger, kinds []string) map[string][2]prometheus.Observer {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "immutd_probe_duration_seconds",
		Help:    "Duration of health-check probes, by check kind (http, tcp, grpc, exec) and result (success, failure).",
		Buckets: durationBuckets,
	}, []string{"kind", "result"})
	if reg != nil {
		if err := reg.Register(h); err != nil {
			if existing, ok := asHistogramVec(err); ok {
				h = existing
			} else {
				log.Error("register probe metric failed", zap.Error(err))
			}
		}
	}
	o := make(map[string][2]prometheus.Observer, len(kinds))
	for _, kind := range kinds {
		var byResult [2]prometheus.Observer
		for r, result := range []string{"success", "failure"} {
			byResult[r] = h.WithLabelValues(kind, result)
		}
		o[kind] = byResult
	}
	return o
}

func asHistogramVec(err error) (*prometheus.HistogramVec, bool) {
	var are prometheus.AlreadyRegisteredError
	if !errors.As(err, &are) {
		return nil, false
	}
	h, ok := are.ExistingCollector.(*prometheus.HistogramVec)
	return h, ok
}
