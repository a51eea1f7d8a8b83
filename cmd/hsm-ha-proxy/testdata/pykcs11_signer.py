"""A long-lived PyKCS11 application for the hot-upgrade test (upgrade_test.go).

Usage: pykcs11_signer.py MODULE TOKEN_LABEL KEY_LABEL
(P11_KIT_SERVER_ADDRESS names the sidecar's PKCS#11 socket.) It opens one session, logs in once, finds the key
once, then signs with CKM_SHA256_RSA_PKCS until a line arrives on its standard input, one line per call:
  OK <i> <micros> <session handle> <session state> <hex signature>
  ERR <i> <error>
The test verifies every signature; the session handle and state show the session and the login survived.
"""
import select
import sys
import time

import PyKCS11

module, token, label = sys.argv[1:4]
lib = PyKCS11.PyKCS11Lib()
lib.load(module)
slot = next(s for s in lib.getSlotList(tokenPresent=True) if lib.getTokenInfo(s).label.strip() == token)
session = lib.openSession(slot)
session.login("any PIN: the sidecar holds the partition's")
key = session.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY), (PyKCS11.CKA_LABEL, label)])[0]
mech = PyKCS11.Mechanism(PyKCS11.CKM_SHA256_RSA_PKCS, None)
print("READY", flush=True)
i = 0
while not select.select([sys.stdin], [], [], 0)[0]:
    data = ("message %d" % i).encode()
    began = time.monotonic()
    try:
        sig = bytes(session.sign(key, data, mech))
        micros = int((time.monotonic() - began) * 1e6)
        state = session.getSessionInfo().state
        print("OK %d %d %d %d %s" % (i, micros, session.session.value(), state, sig.hex()), flush=True)
    except PyKCS11.PyKCS11Error as e:
        print("ERR %d %s" % (i, e), flush=True)
    i += 1
session.logout()
session.closeSession()
print("DONE", flush=True)
