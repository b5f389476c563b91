package local

import (
	"os"
	"testing"
)

func TestParseProcStat(t *testing.T) {
	line := "4242 (we ird) (name) S 1 4240 4241 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 " +
		"18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n"
	st, err := parseProcStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	want := procStat{PID: 4242, State: 'S', PPID: 1, PGrp: 4240, Session: 4241, StartTicks: 987654}
	if st != want {
		t.Fatalf("got %+v, want %+v", st, want)
	}
	for _, bad := range []string{"", "12 (x) S 1", "x (y) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20"} {
		if _, err := parseProcStat([]byte(bad)); err == nil {
			t.Errorf("parsed %q", bad)
		}
	}
}

func TestReadProcStatSelf(t *testing.T) {
	st, err := readProcStat("/proc", os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st.PID != os.Getpid() || !st.live() || st.StartTicks == 0 {
		t.Fatalf("self = %+v", st)
	}
	if _, err := readProcStat("/proc", 0); err != errNoProcess {
		t.Fatalf("pid 0: err = %v", err)
	}
}
