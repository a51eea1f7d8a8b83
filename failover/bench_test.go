package failover

import (
	"context"
	"testing"
)

func BenchmarkPick(b *testing.B) {
	r, err := New(Config{}, members(0, 0, 1, 1))
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := r.Pick(AllMembers, 0); !ok {
			b.Fatal("no member")
		}
	}
}

func BenchmarkDo(b *testing.B) {
	r, err := New(Config{}, members(0, 0, 1, 1))
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	fn := func(context.Context, int) (int, error) { return 1, nil }
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := Do(ctx, r, "sign", AllMembers, fn); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDoParallel(b *testing.B) {
	r, err := New(Config{}, members(0, 0, 1, 1))
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	fn := func(context.Context, int) (int, error) { return 1, nil }
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			if _, _, err := Do(ctx, r, "sign", AllMembers, fn); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkDoInline is BenchmarkDo on members declared Inline: no hand-off to a worker.
func BenchmarkDoInline(b *testing.B) {
	ms := members(0, 0, 1, 1)
	for i := range ms {
		ms[i].Inline = true
	}
	r, err := New(Config{}, ms)
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	fn := func(context.Context, int) (int, error) { return 1, nil }
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := Do(ctx, r, "sign", AllMembers, fn); err != nil {
			b.Fatal(err)
		}
	}
}
