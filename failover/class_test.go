package failover

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestClassProperties(t *testing.T) {
	tests := []struct {
		c         Class
		name      string
		retryable bool
		failure   bool // counted on the breaker
		excluded  bool // neither success nor failure for the breaker
	}{
		{ClassNone, "none", false, false, false},
		{ClassBusy, "busy", true, true, false},
		{ClassDown, "down", true, true, false},
		{ClassFaulty, "faulty", true, true, false},
		{ClassStalled, "stalled", true, false, true},
		{ClassCaller, "caller", false, false, true},
		{ClassRefused, "refused", false, false, true},
		{ClassFatal, "fatal", false, false, true},
		{Class(42), "class_42", false, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.name, tc.c.String())
			require.Equal(t, tc.retryable, tc.c.Retryable())
			require.Equal(t, tc.failure, tc.c.BreakerFailure())
			require.Equal(t, tc.excluded, tc.c.breakerExcluded())
		})
	}
}

func TestClassOf(t *testing.T) {
	timeout := &AttemptTimeoutError{Member: "m0", Timeout: 50 * time.Millisecond}
	tests := []struct {
		name string
		err  error
		want Class
	}{
		{"nil", nil, ClassNone},
		{"classified", errClass(ClassRefused), ClassRefused},
		{"wrapped classified", fmt.Errorf("sign: %w", errClass(ClassFatal)), ClassFatal},
		{"classified none", errClass(ClassNone), ClassNone},
		{"canceled", context.Canceled, ClassCaller},
		{"deadline", context.DeadlineExceeded, ClassCaller},
		{"wrapped deadline", fmt.Errorf("x: %w", context.DeadlineExceeded), ClassCaller},
		{"our timeout", timeout, ClassDown},
		{"our timeout in a stall", &AttemptTimeoutError{Member: "m0", Stalled: true}, ClassStalled},
		{"wrapped our timeout", fmt.Errorf("x: %w", timeout), ClassDown},
		{"anything else", errors.New("CKR_GENERAL_ERROR"), ClassBusy},
		{"no member wrapping a device error", &NoMemberError{Tried: 2, Last: errClass(ClassDown)}, ClassDown},
		{"class sentinel", errorOfClass(ClassFatal), ClassFatal},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, ClassOf(tc.err))
		})
	}
}

func TestClassOfFastPathDoesNotAllocate(t *testing.T) {
	err := errClass(ClassBusy)
	require.Zero(t, testing.AllocsPerRun(100, func() { _ = ClassOf(err) }))
}

func TestErrors(t *testing.T) {
	te := &AttemptTimeoutError{Member: "eastus-1", Timeout: 50 * time.Millisecond}
	require.EqualError(t, te, "failover: attempt on eastus-1 timed out after 50ms")
	require.ErrorIs(t, te, context.DeadlineExceeded)

	last := errClass(ClassDown)
	ne := &NoMemberError{Tried: 2, Last: last}
	require.ErrorIs(t, ne, ErrNoMember)
	require.ErrorIs(t, ne, last)
	var de *devErr
	require.ErrorAs(t, ne, &de)
	require.EqualError(t, ne, "failover: no member can serve (tried 2): ckr down")
	require.EqualError(t, &NoMemberError{}, "failover: no member can serve (tried 0)")
	require.ErrorIs(t, &NoMemberError{Last: ErrClosed}, ErrClosed)
	require.NotErrorIs(t, errors.New("x"), ErrNoMember)
}
