/* The shortcut between sibling clones: see shortcut.h. */
#define _GNU_SOURCE
#include "shortcut.h"
#include "sf.h"

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define INSN(c, d, s, o, i) ((struct bpf_insn){.code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i)})
#define INSNS_FIXED 13
#define INSNS_PER_PORT 4

/* The MAC's first four bytes and last two as the program loads them (host byte order). */
static int32_t mac_head(const unsigned char *mac) {
  uint32_t v;
  memcpy(&v, mac, 4);
  return (int32_t)v;
}

static int32_t mac_tail(const unsigned char *mac) {
  uint16_t v;
  memcpy(&v, mac + 4, 2);
  return v;
}

/*
 * The program, for n ports; returns its length. In eBPF:
 *
 *   r6 = skb; r2 = skb->data; r3 = skb->data_end
 *   if r2 + 6 > r3: goto pass                  (a runt: the verifier insists, and so do we)
 *   w5 = dst MAC[0..3]; w4 = dst MAC[4..5]
 *   per port: if w5 == head && w4 == tail: r1 = its veth; goto redirect
 *   pass:     return TC_ACT_OK                 (on to the bridge)
 *   redirect: return bpf_redirect_peer(r1, 0)  (into the peer of that veth: the sibling's eth0)
 */
static int shortcut__program(const struct shortcut_port *ports, int n, struct bpf_insn *p) {
  int k = 0;
  p[k++] = INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_6, BPF_REG_1, 0, 0);
  p[k++] = INSN(BPF_LDX | BPF_MEM | BPF_W, BPF_REG_2, BPF_REG_6, offsetof(struct __sk_buff, data), 0);
  p[k++] = INSN(BPF_LDX | BPF_MEM | BPF_W, BPF_REG_3, BPF_REG_6, offsetof(struct __sk_buff, data_end), 0);
  p[k++] = INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_4, BPF_REG_2, 0, 0);
  p[k++] = INSN(BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_4, 0, 0, 6);
  p[k++] = INSN(BPF_JMP | BPF_JGT | BPF_X, BPF_REG_4, BPF_REG_3, (short)(INSNS_PER_PORT * n + 2), 0);
  p[k++] = INSN(BPF_LDX | BPF_MEM | BPF_W, BPF_REG_5, BPF_REG_2, 0, 0);
  p[k++] = INSN(BPF_LDX | BPF_MEM | BPF_H, BPF_REG_4, BPF_REG_2, 4, 0);
  const int pass = k + INSNS_PER_PORT * n, redirect = pass + 2;
  for (int i = 0; i < n; i++) {
    p[k++] = INSN(BPF_JMP32 | BPF_JNE | BPF_K, BPF_REG_5, 0, 3, mac_head(ports[i].mac));
    p[k++] = INSN(BPF_JMP32 | BPF_JNE | BPF_K, BPF_REG_4, 0, 2, mac_tail(ports[i].mac));
    p[k++] = INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_1, 0, 0, ports[i].veth);
    p[k] = INSN(BPF_JMP | BPF_JA, 0, 0, (short)(redirect - k - 1), 0);
    k++;
  }
  p[k++] = INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, TC_ACT_OK);
  p[k++] = INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
  p[k++] = INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_2, 0, 0, 0);
  p[k++] = INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_redirect_peer);
  p[k++] = INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
  return k;
}

/* Loads a tc classifier program; its fd or -errno. */
static int shortcut__load(const struct bpf_insn *insns, int n) {
  union bpf_attr a;
  memset(&a, 0, sizeof a);
  a.prog_type = BPF_PROG_TYPE_SCHED_CLS;
  a.insns = (uintptr_t)insns;
  a.insn_cnt = (unsigned)n;
  a.license = (uintptr_t) "Apache-2.0"; /* the project's; the program calls no GPL-only helper */
  memcpy(a.prog_name, "sf_shortcut", sizeof "sf_shortcut");
  int fd = (int)syscall(SYS_bpf, BPF_PROG_LOAD, &a, sizeof a);
  return fd < 0 ? -errno : fd;
}

int shortcut__attach(struct nl *host, const struct shortcut_port *ports, int n, const char **step) {
  if (n < 1 || n > (0x7fff - INSNS_FIXED) / INSNS_PER_PORT) return *step = "port count", -EINVAL;
  struct bpf_insn *insns = sf_array((size_t)(INSNS_FIXED + INSNS_PER_PORT * n), sizeof *insns);
  if (!insns) return *step = "program", -ENOMEM;
  int fd = shortcut__load(insns, shortcut__program(ports, n, insns));
  free(insns);
  if (fd < 0) return *step = "load the BPF program", fd;
  int rc = 0;
  for (int i = 0; i < n && rc == 0; i++) {
    if ((rc = nl__qdisc_add_clsact(host, ports[i].veth)) < 0) *step = "add a clsact qdisc";
    else if ((rc = nl__filter_add_ingress_bpf(host, ports[i].veth, fd, "sf_shortcut")) < 0) *step = "add the ingress filter";
  }
  close(fd); /* the filters hold the program now */
  return rc;
}
