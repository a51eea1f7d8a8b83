package pkcs11ha

import (
	"context"
	"log/slog"
	"strings"
)

// Audit lines (docs/keys.md, "Audit"): every key creation, import, destruction and sync action is logged
// once, at info level, with msg "audit", who asked (WithActor), what, on which devices, and the outcome.
// They never hold key material or a PIN: keys are named by label, CKA_ID and public-key fingerprint.

type actorKey struct{}

// WithActor names who asks for the key-management calls made under ctx ("cli uid 1000", "http client
// app-a"), for the audit lines.
func WithActor(ctx context.Context, who string) context.Context {
	return context.WithValue(ctx, actorKey{}, who)
}

func actorOf(ctx context.Context) string {
	if s, ok := ctx.Value(actorKey{}).(string); ok && s != "" {
		return s
	}
	return "library"
}

// audit logs one audit line: action on partition's key label, the devices that did it, those that
// refused (with why), and the outcome (err).
func (cl *Cluster) audit(ctx context.Context, action, partition, label, fp string, done []string, refused map[string]string, err error, extra ...any) {
	args := []any{"audit", true, "action", action, "who", actorOf(ctx), "partition", partition, "key", label}
	if fp != "" {
		args = append(args, "fingerprint", fp)
	}
	args = append(args, "devices", strings.Join(done, ","))
	for dev, why := range refused {
		args = append(args, "refused_"+dev, why)
	}
	outcome := "ok"
	if err != nil {
		outcome = err.Error()
	}
	args = append(args, "outcome", outcome)
	args = append(args, extra...)
	cl.log.LogAttrs(ctx, slog.LevelInfo, "audit", argsToAttrs(args)...)
}

func argsToAttrs(args []any) []slog.Attr {
	out := make([]slog.Attr, 0, len(args)/2)
	for i := 0; i+1 < len(args); i += 2 {
		k, _ := args[i].(string)
		out = append(out, slog.Any(k, args[i+1]))
	}
	return out
}
