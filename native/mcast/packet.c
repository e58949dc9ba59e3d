/* The mcast datagram: header codec and the channel MAC (see packet.h). */
#include "mcast/packet.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "common/sf.h"

/*
 * HMAC-SHA256 with the key's inner and outer blocks hashed once: each tag then costs copying two
 * digest states and hashing the datagram and 32 bytes, instead of re-deriving the pads per
 * datagram.
 */
struct pkt_mac {
  EVP_MD_CTX *inner, *outer, *work;
};

static const char KEY_LABEL[] = "snowflock-mcast-1";

void pkt_mac__free(struct pkt_mac *m) {
  if (!m) return;
  EVP_MD_CTX_free(m->inner);
  EVP_MD_CTX_free(m->outer);
  EVP_MD_CTX_free(m->work);
  free(m);
}

int pkt_mac__new(struct pkt_mac **out, const struct mc_channel *ch, const unsigned char id[MC_ID_LEN]) {
  unsigned char key[32], pad[64];
  unsigned char msg[sizeof KEY_LABEL - 1 + MC_ID_LEN];
  unsigned int klen = 0;
  memcpy(msg, KEY_LABEL, sizeof KEY_LABEL - 1);
  memcpy(msg + sizeof KEY_LABEL - 1, id, MC_ID_LEN);
  if (!HMAC(EVP_sha256(), ch->token, (int)ch->token_len, msg, sizeof msg, key, &klen) || klen != sizeof key) return -ENOMEM;

  struct pkt_mac *m = sf_calloc(1, sizeof *m);
  if (!m) return -ENOMEM;
  m->inner = EVP_MD_CTX_new(), m->outer = EVP_MD_CTX_new(), m->work = EVP_MD_CTX_new();
  int ok = m->inner && m->outer && m->work;
  for (int side = 0; ok && side < 2; side++) {
    memset(pad, side ? 0x5c : 0x36, sizeof pad);
    for (size_t i = 0; i < sizeof key; i++) pad[i] ^= key[i];
    EVP_MD_CTX *c = side ? m->outer : m->inner;
    ok = EVP_DigestInit_ex(c, EVP_sha256(), NULL) && EVP_DigestUpdate(c, pad, sizeof pad);
  }
  memset(key, 0, sizeof key), memset(pad, 0, sizeof pad);
  if (!ok) return pkt_mac__free(m), -ENOMEM;
  *out = m;
  return 0;
}

int pkt_mac__tag(struct pkt_mac *m, const struct iovec *iov, int n, unsigned char tag[PKT_TAG]) {
  unsigned char inner[32], full[32];
  unsigned int len;
  if (!EVP_MD_CTX_copy_ex(m->work, m->inner)) return -ENOMEM;
  for (int i = 0; i < n; i++)
    if (iov[i].iov_len && !EVP_DigestUpdate(m->work, iov[i].iov_base, iov[i].iov_len)) return -ENOMEM;
  if (!EVP_DigestFinal_ex(m->work, inner, &len)) return -ENOMEM;
  if (!EVP_MD_CTX_copy_ex(m->work, m->outer) || !EVP_DigestUpdate(m->work, inner, sizeof inner) ||
      !EVP_DigestFinal_ex(m->work, full, &len))
    return -ENOMEM;
  memcpy(tag, full, PKT_TAG);
  return 0;
}

int pkt_mac__verify(struct pkt_mac *m, const unsigned char *buf, size_t len) {
  if (len < PKT_HDR + PKT_TAG) return 0;
  unsigned char tag[PKT_TAG];
  struct iovec iov = { .iov_base = (void *)buf, .iov_len = len - PKT_TAG };
  if (pkt_mac__tag(m, &iov, 1, tag) < 0) return 0;
  /* Constant time: how much of a forged tag was right must not show in how long we take. */
  unsigned char diff = 0;
  for (int i = 0; i < PKT_TAG; i++) diff |= (unsigned char)(tag[i] ^ buf[len - PKT_TAG + i]);
  return diff == 0;
}

void pkt_hdr__put(unsigned char *p, const struct pkt_hdr *h) {
  put32(p, PKT_MAGIC);
  p[4] = PKT_VERSION;
  p[5] = h->type;
  put16(p + 6, h->body_len);
  put64(p + 8, h->session);
  put64(p + 16, h->from);
}

int pkt_hdr__get(struct pkt_hdr *h, const unsigned char *buf, size_t len) {
  if (len < PKT_HDR + PKT_TAG || get32(buf) != PKT_MAGIC || buf[4] != PKT_VERSION) return -EBADMSG;
  h->type = buf[5];
  h->body_len = get16(buf + 6);
  h->session = get64(buf + 8);
  h->from = get64(buf + 16);
  if ((size_t)h->body_len + PKT_HDR + PKT_TAG != len) return -EBADMSG;
  return 0;
}

void pkt_data__put(unsigned char *p, const struct pkt_data *d) {
  put32(p, d->granule);
  put32(p + 4, d->pos);
  put64(p + 8, d->seq);
  put32(p + 16, d->offset);
  put32(p + 20, d->total);
  put16(p + 24, d->piece);
  p[26] = d->kind;
  p[27] = 0;
  put32(p + 28, 0);
}

void pkt_data__get(struct pkt_data *d, const unsigned char *p) {
  d->granule = get32(p);
  d->pos = get32(p + 4);
  d->seq = get64(p + 8);
  d->offset = get32(p + 16);
  d->total = get32(p + 20);
  d->piece = get16(p + 24);
  d->kind = p[26];
}
