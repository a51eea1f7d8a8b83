// Sign is an ordinary Java program on the SunPKCS11 provider, run by TestJavaSunPKCS11 as a single-file
// source launch:
//
//	java Sign.java CONFIG MESSAGE ALIAS...
//
// It loads the PKCS#11 KeyStore of the provider configured by CONFIG (any password: the token needs none)
// and, for each ALIAS, which must be a private-key entry with a certificate, prints
//
//	ALIAS PUBLIC base64(SubjectPublicKeyInfo of the entry's certificate)
//	ALIAS ALGORITHM base64(signature of MESSAGE)
//
// for SHA256withECDSA (EC keys), or SHA256withRSA and RSASSA-PSS (SHA-256, MGF1-SHA-256, salt 32) (RSA
// keys), signed by the provider. Anything else is an error: a message on stderr and exit status 1.
import java.nio.charset.StandardCharsets;
import java.security.KeyStore;
import java.security.PrivateKey;
import java.security.Provider;
import java.security.Security;
import java.security.Signature;
import java.security.cert.Certificate;
import java.security.spec.MGF1ParameterSpec;
import java.security.spec.PSSParameterSpec;
import java.util.Base64;

public class Sign {
    public static void main(String[] args) throws Exception {
        if (args.length < 3) {
            System.err.println("usage: java Sign.java CONFIG MESSAGE ALIAS...");
            System.exit(2);
        }
        Provider p = Security.getProvider("SunPKCS11").configure(args[0]);
        KeyStore ks = KeyStore.getInstance("PKCS11", p);
        ks.load(null, "any password".toCharArray());
        byte[] msg = args[1].getBytes(StandardCharsets.UTF_8);
        Base64.Encoder b64 = Base64.getEncoder();
        for (int i = 2; i < args.length; i++) {
            String alias = args[i];
            if (!ks.isKeyEntry(alias)) {
                throw new IllegalStateException(alias + ": not a key entry");
            }
            PrivateKey key = (PrivateKey) ks.getKey(alias, null);
            Certificate cert = ks.getCertificate(alias);
            if (key == null || cert == null) {
                throw new IllegalStateException(alias + ": no key or no certificate");
            }
            System.out.println(alias + " PUBLIC " + b64.encodeToString(cert.getPublicKey().getEncoded()));
            if (key.getAlgorithm().equals("EC")) {
                System.out.println(alias + " SHA256withECDSA " + b64.encodeToString(sign(p, "SHA256withECDSA", null, key, msg)));
            } else {
                System.out.println(alias + " SHA256withRSA " + b64.encodeToString(sign(p, "SHA256withRSA", null, key, msg)));
                PSSParameterSpec pss = new PSSParameterSpec("SHA-256", "MGF1", MGF1ParameterSpec.SHA256, 32, 1);
                System.out.println(alias + " RSASSA-PSS " + b64.encodeToString(sign(p, "RSASSA-PSS", pss, key, msg)));
            }
        }
    }

    static byte[] sign(Provider p, String alg, PSSParameterSpec params, PrivateKey key, byte[] msg) throws Exception {
        Signature s = Signature.getInstance(alg, p);
        s.initSign(key);
        if (params != null) {
            s.setParameter(params);
        }
        s.update(msg);
        return s.sign();
    }
}
