/*
 * memdesc: builds and inspects memory descriptors (descriptor.h).
 *
 *   memdesc build --ram FILE --state FILE --key KEY [--granule SIZE] [--punch] --out FILE
 *   memdesc info FILE                  one JSON line: identity, geometry, page counts, sizes
 *   memdesc state FILE                 the device state, on stdout (for QEMU's migrate-incoming)
 *   memdesc verify FILE --ram FILE     does the RAM file still match? exit 0, or 1 with one line
 *
 * build prints the same JSON line as info (with --punch, plus "punchedBytes"). --punch then gives
 * back the memory of the RAM file's zero pages (descriptor__punch_zero): its contents stay the same,
 * so the descriptor describes it still. Exit codes: 0 done, 1 failed, 2 bad usage.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/sf.h"
#include "memory/crc32c.h"
#include "memory/descriptor.h"

static void usage(void) {
  sf_die(2, 0,
         "usage: memdesc build --ram FILE --state FILE --key KEY [--granule SIZE] [--punch] --out FILE | "
         "memdesc info FILE | memdesc state FILE | memdesc verify FILE --ram FILE");
}

static void print_info(const struct descriptor *d, int64_t punched) {
  char id[2 * DESC_ID_LEN + 1];
  descriptor__id_hex(d, id);
  uint64_t data_pages = d->n_pages - d->hole_pages - d->zeroed_pages;
  uint64_t map_bytes = (d->n_pages + 63) / 64 * 8;
  printf("{\"key\":\"%s\",\"id\":\"%s\",\"ramSize\":%" PRIu64 ",\"pageSize\":%u,\"granuleSize\":%u,"
         "\"pages\":%" PRIu64 ",\"dataPages\":%" PRIu64 ",\"holePages\":%" PRIu64 ",\"zeroedPages\":%" PRIu64 ","
         "\"granules\":%" PRIu64 ",\"dataGranules\":%" PRIu64 ",\"stateBytes\":%" PRIu64 ",\"mapBytes\":%" PRIu64 ","
         "\"sumBytes\":%" PRIu64 ",\"fileBytes\":%" PRIu64 ",\"checksum\":\"crc32c/%s\"",
         d->key, id, d->ram_size, DESC_PAGE, d->granule_size, d->n_pages, data_pages, d->hole_pages, d->zeroed_pages,
         d->n_granules, d->n_data_granules, d->state_size, map_bytes, d->n_data_granules * 4, d->file_size, crc32c_impl());
  if (punched >= 0) printf(",\"punchedBytes\":%" PRId64, punched);
  printf("}\n");
}

static int cmd_build(int argc, char **argv) {
  const char *ram = NULL, *state = NULL, *key = NULL, *out = NULL;
  uint64_t granule = DESC_PAGE;
  int punch = 0;
  static const struct option opts[] = {
    {"ram", required_argument, 0, 'r'}, {"state", required_argument, 0, 's'}, {"key", required_argument, 0, 'k'},
    {"granule", required_argument, 0, 'g'}, {"out", required_argument, 0, 'o'}, {"punch", no_argument, 0, 'p'},
    {0, 0, 0, 0},
  };
  int c;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'r': ram = optarg; break;
    case 's': state = optarg; break;
    case 'k': key = optarg; break;
    case 'o': out = optarg; break;
    case 'p': punch = 1; break;
    case 'g':
      if (sf_parse_size(optarg, &granule) < 0 || granule > UINT32_MAX) sf_die(2, 0, "--granule %s: not a size (4K, 64K, 2M)", optarg);
      break;
    default: usage();
    }
  }
  if (!ram || !state || !key || !out || optind != argc) usage();
  struct descriptor d;
  const char *why = "";
  int err = descriptor__build(&d, ram, state, key, (uint32_t)granule, &why);
  if (err) {
    sf_err(err, "cannot describe the template %s (RAM %s, state %s): %s", key, ram, state, why);
    descriptor__free(&d);
    return 1;
  }
  if ((err = descriptor__write(&d, out)) < 0) {
    sf_err(err, "cannot write the descriptor %s", out);
    descriptor__free(&d);
    return 1;
  }
  uint64_t freed = 0;
  if (punch) {
    int fd = open(ram, O_RDWR | O_CLOEXEC);
    err = fd < 0 ? -errno : descriptor__punch_zero(&d, fd, &freed);
    if (fd >= 0) close(fd);
    if (err) {
      sf_err(err, "cannot give back the zero pages of %s%s", ram, err == -EBADMSG ? " (it changed since it was described)" : "");
      descriptor__free(&d);
      return 1;
    }
  }
  print_info(&d, punch ? (int64_t)freed : -1);
  descriptor__free(&d);
  return 0;
}

static int load(const char *path, struct descriptor *d) {
  const char *why = "";
  int err = descriptor__load(d, path, &why);
  if (err) sf_err(err, "descriptor %s: %s", path, why);
  return err;
}

static int cmd_verify(int argc, char **argv) {
  const char *ram = NULL;
  static const struct option opts[] = {{"ram", required_argument, 0, 'r'}, {0, 0, 0, 0}};
  int c;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    if (c != 'r') usage();
    ram = optarg;
  }
  if (!ram || optind != argc - 1) usage();
  struct descriptor d;
  if (load(argv[optind], &d)) return 1;
  int fd = open(ram, O_RDONLY | O_CLOEXEC);
  int err = fd < 0 ? -errno : 0;
  uint64_t bad = 0;
  if (!err) err = descriptor__verify_ram(&d, fd, &bad);
  if (fd >= 0) close(fd);
  if (err == -EBADMSG) sf_err(0, "%s does not match descriptor %s: granule %" PRIu64 " differs", ram, argv[optind], bad);
  else if (err == -EMEDIUMTYPE) sf_err(0, "%s does not match descriptor %s: its size differs", ram, argv[optind]);
  else if (err) sf_err(err, "cannot verify %s", ram);
  descriptor__free(&d);
  return err ? 1 : 0;
}

int main(int argc, char **argv) {
  sf_prog("memdesc");
  if (argc < 2) usage();
  const char *cmd = argv[1];
  if (!strcmp(cmd, "build")) return cmd_build(argc - 1, argv + 1);
  if (!strcmp(cmd, "verify")) return cmd_verify(argc - 1, argv + 1);
  if ((strcmp(cmd, "info") && strcmp(cmd, "state")) || argc != 3) usage();
  struct descriptor d;
  if (load(argv[2], &d)) return 1;
  int err = 0;
  if (!strcmp(cmd, "info")) print_info(&d, -1);
  else if ((err = sf_write_all(STDOUT_FILENO, d.state, d.state_size)) < 0) sf_err(err, "cannot write the device state");
  descriptor__free(&d);
  return err ? 1 : 0;
}
