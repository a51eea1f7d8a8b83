package fakeclock_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/pkcs11-ha/pkcs11-ha/health"
	"github.com/pkcs11-ha/pkcs11-ha/health/fakeclock"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var t0 = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

func fired(tm health.Timer) (time.Time, bool) {
	select {
	case v := <-tm.C():
		return v, true
	default:
		return time.Time{}, false
	}
}

func TestTimersFireAtTheirDeadline(t *testing.T) {
	c := fakeclock.New(t0)
	a := c.NewTimer(10 * time.Millisecond)
	b := c.NewTimer(5 * time.Millisecond)
	require.Equal(t, 2, c.Pending())

	c.Advance(5*time.Millisecond - 1)
	_, ok := fired(b)
	require.False(t, ok, "fired early")

	c.Advance(1)
	v, ok := fired(b)
	require.True(t, ok)
	require.Equal(t, t0.Add(5*time.Millisecond), v)
	_, ok = fired(a)
	require.False(t, ok)
	require.Equal(t, 1, c.Pending())

	c.Advance(time.Hour)
	v, ok = fired(a)
	require.True(t, ok)
	require.Equal(t, t0.Add(10*time.Millisecond), v, "a timer reports its own deadline, not the jump target")
	require.Equal(t, t0.Add(time.Hour+5*time.Millisecond), c.Now())
	require.Zero(t, c.Pending())
}

func TestStopAndSet(t *testing.T) {
	c := fakeclock.New(t0)
	a := c.NewTimer(time.Second)
	require.True(t, a.Stop())
	require.False(t, a.Stop(), "second stop")
	c.Advance(2 * time.Second)
	_, ok := fired(a)
	require.False(t, ok, "a stopped timer must not fire")

	b := c.NewTimer(time.Second)
	c.Set(t0) // backwards: nothing due
	_, ok = fired(b)
	require.False(t, ok)
	require.Equal(t, t0, c.Now())
	c.Set(t0.Add(3 * time.Second))
	_, ok = fired(b)
	require.True(t, ok)
	require.False(t, b.Stop(), "stop after firing")
}

func TestNonPositiveTimerFiresAtOnce(t *testing.T) {
	c := fakeclock.New(t0)
	for _, d := range []time.Duration{0, -time.Second} {
		tm := c.NewTimer(d)
		v, ok := fired(tm)
		require.True(t, ok)
		require.Equal(t, t0, v)
		require.Zero(t, c.Pending())
	}
}

func TestBlockUntil(t *testing.T) {
	c := fakeclock.New(t0)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.BlockUntil(2)
	}()
	c.NewTimer(time.Second)
	select {
	case <-done:
		t.Fatal("BlockUntil(2) returned with one timer pending")
	case <-time.After(20 * time.Millisecond):
	}
	c.NewTimer(time.Second)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("BlockUntil(2) did not return with two timers pending")
	}

	// Exact count: waiting for 0 returns once the timers fire.
	go func() { c.Advance(time.Second) }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, c.BlockUntilContext(ctx, 0))

	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel2()
	require.ErrorIs(t, c.BlockUntilContext(ctx2, 5), context.DeadlineExceeded)
}

func TestAfterFunc(t *testing.T) {
	c := fakeclock.New(t0)
	calls := make(chan time.Time, 3)
	a := c.AfterFunc(time.Second, func() { calls <- c.Now() })
	stopped := c.AfterFunc(time.Second, func() { t.Error("a stopped AfterFunc ran") })
	require.Nil(t, a.C())
	require.Equal(t, 2, c.Pending())
	require.True(t, stopped.Stop())

	c.Advance(time.Second - 1)
	require.Empty(t, calls)
	c.Advance(1)
	select {
	case at := <-calls:
		require.Equal(t, t0.Add(time.Second), at)
	case <-time.After(10 * time.Second):
		t.Fatal("f never ran")
	}
	require.False(t, a.Stop(), "already fired")
	require.Zero(t, c.Pending())

	c.AfterFunc(0, func() { calls <- c.Now() })
	select {
	case <-calls:
	case <-time.After(10 * time.Second):
		t.Fatal("f with d <= 0 never ran")
	}
}
