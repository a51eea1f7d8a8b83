// SignLoop is a long-lived Java application on the stock SunPKCS11 provider, run by the hot-upgrade test
// (upgrade_test.go) as a single-file source launch:
//
//	java SignLoop.java CONFIG ALIAS
//
// It loads the provider's KeyStore once (any password: the token needs none), takes the private key ALIAS
// once, prints READY, then signs "message N" with SHA256withRSA until its standard input closes, one line
// per call: "OK N MICROS base64(signature)" or "ERR N exception". The test verifies every signature.
import java.nio.charset.StandardCharsets;
import java.security.KeyStore;
import java.security.PrivateKey;
import java.security.Provider;
import java.security.Security;
import java.security.Signature;
import java.util.Base64;

public class SignLoop {
    public static void main(String[] args) throws Exception {
        Provider p = Security.getProvider("SunPKCS11").configure(args[0]);
        KeyStore ks = KeyStore.getInstance("PKCS11", p);
        ks.load(null, "any password".toCharArray());
        PrivateKey key = (PrivateKey) ks.getKey(args[1], null);
        if (key == null) {
            throw new IllegalStateException(args[1] + ": no such key");
        }
        Base64.Encoder b64 = Base64.getEncoder();
        System.out.println("READY");
        System.out.flush();
        for (int i = 0; System.in.available() == 0; i++) {
            byte[] msg = ("message " + i).getBytes(StandardCharsets.UTF_8);
            long began = System.nanoTime();
            try {
                Signature s = Signature.getInstance("SHA256withRSA", p);
                s.initSign(key);
                s.update(msg);
                byte[] sig = s.sign();
                System.out.println("OK " + i + " " + (System.nanoTime() - began) / 1000 + " " + b64.encodeToString(sig));
            } catch (Exception e) {
                System.out.println("ERR " + i + " " + e);
            }
            System.out.flush();
        }
    }
}
