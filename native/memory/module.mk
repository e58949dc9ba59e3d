# memory/: SnowFlock's memory on demand for VM clones on other hosts (see memory/descriptor.h).
#   memdesc     builds and reads the descriptor of a template (page map, checksums, device state)
#   memserver   serves a template's frozen RAM to the memtaps of a ticket (parent's host), and
#               pushes it to their group with mcast/ (--mcast-group)
#   memtap      a FUSE file that is a clone's RAM, fetched on demand (each clone host); libfuse3;
#               takes the push in (push.c) when there is one
#   memtouch    a benchmark: faults pages of a file mapping and times each fault
#   netdelay    a benchmark aid: a TCP relay adding a fixed one-way delay (this kernel has no netem)
#   libnohuge.so  LD_PRELOAD into QEMU: keeps MADV_HUGEPAGE off the memtap file's mapping
# Dynamic (they run on hosts, never in guests); libfuse3 through pkg-config.
FUSE_CFLAGS := $(shell pkg-config --cflags fuse3)
FUSE_LIBS := $(shell pkg-config --libs fuse3)
MEMORY_CORE := $(BUILD)/obj/memory/descriptor.o $(BUILD)/obj/memory/crc32c.o $(BUILD)/obj/memory/sha256.o
MEMORY_HDRS := $(wildcard memory/*.h)

PROGRAMS += $(BUILD)/memdesc

$(BUILD)/obj/memory/%.o: memory/%.c $(COMMON_HDRS) $(MEMORY_HDRS) $(MCAST_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(FUSE_CFLAGS) -c -o $@ $<

$(BUILD)/memdesc: $(BUILD)/obj/memory/memdesc.o $(MEMORY_CORE) $(COMMON_OBJS)
	$(CC) $(CFLAGS) -o $@ $^ $(LDFLAGS)

PROGRAMS += $(BUILD)/memserver
$(BUILD)/memserver: $(BUILD)/obj/memory/memserver.o $(BUILD)/obj/memory/wire.o $(BUILD)/obj/memory/workset.o $(BUILD)/obj/memory/idle.o \
	$(BUILD)/obj/memory/multicast.o $(MCAST_OBJS) $(MEMORY_CORE) $(COMMON_OBJS)
	$(CC) $(CFLAGS) -o $@ $^ $(LDFLAGS) $(MCAST_LIBS)

PROGRAMS += $(BUILD)/memtap
MEMTAP_OBJS := $(BUILD)/obj/memory/memtap.o $(BUILD)/obj/memory/fill.o $(BUILD)/obj/memory/link.o $(BUILD)/obj/memory/histogram.o \
	$(BUILD)/obj/memory/wire.o $(BUILD)/obj/memory/idle.o $(BUILD)/obj/memory/push.o $(BUILD)/obj/memory/multicast.o
$(BUILD)/memtap: $(MEMTAP_OBJS) $(MCAST_OBJS) $(MEMORY_CORE) $(COMMON_OBJS)
	$(CC) $(CFLAGS) -pthread -o $@ $^ $(LDFLAGS) $(FUSE_LIBS) $(MCAST_LIBS)

# The preload shim goes into QEMU, which is not sanitized: always built plain, position-independent.
PROGRAMS += $(BUILD)/libnohuge.so
$(BUILD)/libnohuge.so: memory/nohuge.c
	@mkdir -p $(dir $@)
	$(CC) -O2 -g -Wall -Wextra -std=gnu11 -shared -fPIC -o $@ $< -ldl

PROGRAMS += $(BUILD)/memtouch
$(BUILD)/memtouch: $(BUILD)/obj/memory/memtouch.o $(BUILD)/obj/memory/histogram.o $(MEMORY_CORE) $(COMMON_OBJS)
	$(CC) $(CFLAGS) -o $@ $^ $(LDFLAGS)

PROGRAMS += $(BUILD)/netdelay
$(BUILD)/netdelay: $(BUILD)/obj/memory/netdelay.o $(COMMON_OBJS)
	$(CC) $(CFLAGS) -pthread -o $@ $^ $(LDFLAGS)
