/*
 * The sf-pmix protocol: how the launcher drives its PMIx server over the server's stdin/stdout
 * (the way esbuild drives its native child). This comment and the schema table in protocol.c are
 * the one definition; launcher/pmix/protocol.ts mirrors both, field by field, and
 * test/system/pmix-protocol.test.ts round-trips every message through this codec
 * (`sf-pmix --echo`).
 *
 * Framing: every message is one frame
 *
 *   u32 length of the body (little endian) | body = u8 type | fields, in the order listed
 *
 * Field encodings (all integers little endian):
 *   u8, u32, i32   fixed width
 *   str            u32 byte count | UTF-8 bytes (no NUL; at most SF_PMIX_MAX_FRAME)
 *   bytes          u32 byte count | bytes
 *   u32s / strs    u32 count | that many u32 / str
 *   list<T>        u32 count | that many T, each T its fields in order
 * A body must be consumed exactly; a frame longer than SF_PMIX_MAX_FRAME is refused.
 *
 * Version: the launcher's first message is HELLO, the server's first is READY; both carry
 * SF_PMIX_PROTOCOL_VERSION as their first field and each side refuses a version it does not speak
 * (the server answers ERROR and exits 2; the driver rejects READY). Any change to this table bumps
 * the version.
 *
 * Launcher -> server
 *   1 HELLO        version u32, listen str, handshake_ms u32, tmpdir str, share_topology u8
 *                    listen: the IPv4 address the server may listen on (nothing else);
 *                    handshake_ms: how long a connecting client may take to send its handshake;
 *                    tmpdir: libpmix's server and system tmpdir ("" = libpmix's default);
 *                    share_topology: 1 = libpmix hands ranks this host's hardware topology in
 *                    a shared-memory file in tmpdir (it leaves hwloc.sm there), so that Open MPI
 *                    does not discover it in every rank. Only when every rank runs on this host
 *                    and can open tmpdir (never for VM clones: Open MPI fails MPI_Init when the
 *                    file it is given cannot be opened). Needs a tmpdir.
 *   2 JOB          nspace str, nodes list<node>, appnums u32s, local_nodes u32s
 *                    node = hostname str, ranks u32s
 *                    appnums[r] is the app number of rank r (so the job has appnums.count ranks);
 *                    local_nodes are indices into nodes: the nodes whose ranks this server serves.
 *                    All nodes local = one server for the whole job; a subset = one server per
 *                    host, fences relayed through the launcher (FENCE / FENCE_DONE).
 *   3 ENV_REQ      rank u32                        -> ENV
 *   4 FENCE_DONE   seq u32, ok u8, data bytes      answer to FENCE: the concatenation, in host
 *                                                  order, of the data of every server's FENCE of
 *                                                  that collective; ok = 0 fails it in the ranks
 *   5 SHUTDOWN     (no fields)                     deregister, finalize, exit 0
 *
 * Server -> launcher
 *  64 READY        version u32, pid u32, uri str   libpmix is up, listening (uri: its address)
 *  65 JOB_OK       nspace str, local_ranks u32s    the job is registered
 *  66 ENV          rank u32, vars strs             "KEY=VALUE": the rank's PMIx environment
 *  67 CONNECTED    rank u32                        a client of the job finished its handshake
 *  68 FINALIZED    rank u32                        it called PMIx_Finalize
 *  69 DISCONNECTED rank u32                        its connection closed without finalize or abort
 *  70 ABORT        rank u32, status i32, message str, targets u32s
 *                                                  it called PMIx_Abort (MPI_Abort: status is the
 *                                                  errorcode); targets empty = the whole job
 *  71 FENCE        seq u32, participants u32s, data bytes
 *                                                  every local participant is in; the launcher
 *                                                  answers FENCE_DONE with the same seq
 *  72 FENCE_LOCAL  seq u32, participants u32s, nbytes u32
 *                                                  a fence whose participants are all local,
 *                                                  completed here (reported, nothing to answer)
 *  73 UNSUPPORTED  rank u32, call str              the rank asked for what this server refuses
 *                                                  (spawn, publish, lookup, ...); the call failed
 *                                                  in the rank with PMIX_ERR_NOT_SUPPORTED
 *  74 ERROR        message str                     one line; the server exits non-zero after it
 *
 * Participants: ranks of the job's namespace; SF_PMIX_ALL_RANKS (PMIx's wildcard) means all.
 * seq numbers the fences of one server from 0. A rank that aborted is not also reported
 * DISCONNECTED.
 */
#ifndef SF_PMIX_PROTOCOL_H
#define SF_PMIX_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

#define SF_PMIX_PROTOCOL_VERSION 1u
#define SF_PMIX_MAX_FRAME (64u << 20)
#define SF_PMIX_ALL_RANKS 0xfffffffeu

enum pm_type {
  PM_HELLO = 1, PM_JOB = 2, PM_ENV_REQ = 3, PM_FENCE_DONE = 4, PM_SHUTDOWN = 5,
  PM_READY = 64, PM_JOB_OK = 65, PM_ENV = 66, PM_CONNECTED = 67, PM_FINALIZED = 68,
  PM_DISCONNECTED = 69, PM_ABORT = 70, PM_FENCE = 71, PM_FENCE_LOCAL = 72, PM_UNSUPPORTED = 73,
  PM_ERROR = 74,
};

struct pm_u32s { uint32_t n; uint32_t *v; };
struct pm_strs { uint32_t n; char **v; };
struct pm_bytes { uint32_t n; uint8_t *v; };
struct pm_list { uint32_t n; void *v; }; /* n elements of a struct the schema names */

struct pm_hello { uint32_t version; char *listen; uint32_t handshake_ms; char *tmpdir; uint8_t share_topology; };
struct pm_node { char *hostname; struct pm_u32s ranks; };
struct pm_job { char *nspace; struct pm_list nodes; /* struct pm_node */ struct pm_u32s appnums; struct pm_u32s local_nodes; };
struct pm_env_req { uint32_t rank; };
struct pm_fence_done { uint32_t seq; uint8_t ok; struct pm_bytes data; };
struct pm_ready { uint32_t version; uint32_t pid; char *uri; };
struct pm_job_ok { char *nspace; struct pm_u32s local_ranks; };
struct pm_env { uint32_t rank; struct pm_strs vars; };
struct pm_rank { uint32_t rank; }; /* CONNECTED, FINALIZED, DISCONNECTED */
struct pm_abort { uint32_t rank; int32_t status; char *message; struct pm_u32s targets; };
struct pm_fence { uint32_t seq; struct pm_u32s participants; struct pm_bytes data; };
struct pm_fence_local { uint32_t seq; struct pm_u32s participants; uint32_t nbytes; };
struct pm_unsupported { uint32_t rank; char *call; };
struct pm_error { char *message; };

/* One decoded message: its type and the struct of that type. */
struct pm_msg {
  uint8_t type;
  union {
    struct pm_hello hello;
    struct pm_job job;
    struct pm_env_req env_req;
    struct pm_fence_done fence_done;
    struct pm_ready ready;
    struct pm_job_ok job_ok;
    struct pm_env env;
    struct pm_rank rank;
    struct pm_abort abort;
    struct pm_fence fence;
    struct pm_fence_local fence_local;
    struct pm_unsupported unsupported;
    struct pm_error error;
  } u;
};

/* The message's name ("HELLO"), or NULL for an unknown type. */
const char *pm_type_name(uint8_t type);

/* Encodes msg as one whole frame (length prefix included) into a new buffer; 0 or -errno. */
int pm_encode(const struct pm_msg *msg, uint8_t **frame, size_t *len);
/* Decodes a frame body (type byte first, no length prefix) into msg, which owns what it points
 * to afterwards (pm_free). 0, -EPROTO for a malformed body (why: in *why, a static string),
 * -ENOMEM. On failure msg holds nothing. */
int pm_decode(const uint8_t *body, size_t len, struct pm_msg *msg, const char **why);
void pm_free(struct pm_msg *msg);

#endif
