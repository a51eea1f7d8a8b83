package p11front

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha"
)

// Key management through the front end (docs/keys.md, "Through the PKCS#11 front end"): C_GenerateKeyPair,
// C_CreateObject (certificates), C_DestroyObject and C_SetAttributeValue (CKA_LABEL), for the clients the
// client table grants admin: true, each replicated to every device of the partition by the library.
// Handlers: admingen.go (key pairs), adminobjects.go (the rest).

// KeyAdmin is what the management calls need of a *pkcs11ha.Cluster; a Backend without it answers them
// CKR_FUNCTION_NOT_SUPPORTED.
type KeyAdmin interface {
	GenerateKey(ctx context.Context, partition string, spec pkcs11ha.KeySpec) (pkcs11ha.KeyInfo, error)
	DestroyKey(ctx context.Context, partition, label string) error
	RenameKey(ctx context.Context, partition, label, newLabel string) error
	PutCertificate(ctx context.Context, partition, label string, id, der []byte) (string, error)
	DestroyCertificate(ctx context.Context, partition, label string) error
}

// AdminAuthorizer is an Authorizer that also says which unix peers are granted admin: true
// (proxy.Server.UnixAdmin); with an Authorizer without it nobody manages keys here.
type AdminAuthorizer interface {
	UnixAdmin(uid, gid int) bool
}

// adminTimeout bounds a management call, as the HTTP API's (a creation reaches every device, one slow
// RSA-4096 generation and then the copies, and settles a race with a concurrent creation).
const adminTimeout = 2 * time.Minute

// refusedNotAdmin is the answer to a management call from a client without admin: true. Of the codes
// that say "not for you", it is the one stock tools name clearly: pkcs11-tool 0.23 prints
// CKR_TOKEN_WRITE_PROTECTED, while it has no name for CKR_ACTION_PROHIBITED ("unknown PKCS11 error"), and
// CKR_USER_NOT_LOGGED_IN would send the user to log in, which changes nothing here.
const refusedNotAdmin = pkcs11.CKR_TOKEN_WRITE_PROTECTED

func (b clusterBackend) GenerateKey(ctx context.Context, partition string, spec pkcs11ha.KeySpec) (pkcs11ha.KeyInfo, error) {
	return b.cl.GenerateKey(ctx, partition, spec)
}

func (b clusterBackend) DestroyKey(ctx context.Context, partition, label string) error {
	return b.cl.DestroyKey(ctx, partition, label)
}

func (b clusterBackend) RenameKey(ctx context.Context, partition, label, newLabel string) error {
	return b.cl.RenameKey(ctx, partition, label, newLabel)
}

func (b clusterBackend) PutCertificate(ctx context.Context, partition, label string, id, der []byte) (string, error) {
	return b.cl.PutCertificate(ctx, partition, label, id, der)
}

func (b clusterBackend) DestroyCertificate(ctx context.Context, partition, label string) error {
	return b.cl.DestroyCertificate(ctx, partition, label)
}

// isAdmin tells whether the peer is granted admin: true now (the table SIGHUP reloads).
func (c *conn) isAdmin() bool {
	a, ok := c.s.auth.(AdminAuthorizer)
	return ok && c.credErr == nil && a.UnixAdmin(c.cred.UID, c.cred.GID)
}

// keyAdmin checks that session sh may manage keys and returns it with the cluster's key management and
// the context of the call (named for the audit lines).
func (c *conn) keyAdmin(sh uint64, call string) (*session, KeyAdmin, context.Context, context.CancelFunc, error) {
	s, err := c.grantedSession(sh)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	ka, ok := c.s.be.(KeyAdmin)
	if !ok {
		return nil, nil, nil, nil, rvErr(pkcs11.CKR_FUNCTION_NOT_SUPPORTED, "key management is not available")
	}
	if !c.isAdmin() {
		c.log.Warn("PKCS#11 "+call+" refused: the client is not granted admin: true", "client", c.clientName(),
			"partition", s.partition, "result", rvName(refusedNotAdmin))
		return nil, nil, nil, nil, rvErr(refusedNotAdmin, "client not granted admin: true")
	}
	if !s.rw {
		return nil, nil, nil, nil, rvErr(pkcs11.CKR_SESSION_READ_ONLY, "a read-only session cannot change the token")
	}
	ctx, cancel := context.WithTimeout(c.s.base, adminTimeout)
	ctx = pkcs11ha.WithActor(ctx, fmt.Sprintf("pkcs11 client %s (uid=%d gid=%d pid=%d)", c.clientName(), c.cred.UID, c.cred.GID, c.cred.PID))
	return s, ka, ctx, cancel, nil
}

// adminRV maps an error of a management call to the CK_RV the application sees, and logs why (the
// library's errors name the devices that refused). A failure to reach enough devices is
// CKR_FUNCTION_FAILED: transient, the call may be made again.
func (c *conn) adminRV(call, partition, label string, err error) error {
	var re *rvError
	if errors.As(err, &re) {
		return err
	}
	var ie *pkcs11ha.InputError
	code := rv(pkcs11.CKR_FUNCTION_FAILED)
	switch {
	case errors.Is(err, pkcs11ha.ErrKeyExists):
		code = pkcs11.CKR_ATTRIBUTE_VALUE_INVALID // the label is taken
	case errors.Is(err, pkcs11ha.ErrUnknownKey):
		code = pkcs11.CKR_OBJECT_HANDLE_INVALID
	case errors.As(err, &ie):
		code = pkcs11.CKR_ATTRIBUTE_VALUE_INVALID
	}
	c.log.Warn("PKCS#11 "+call+" failed", "client", c.clientName(), "partition", partition, "key", label,
		"result", rvName(code), "err", err)
	return rvErr(code, err.Error())
}
