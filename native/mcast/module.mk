# mcast/: SnowFlock's mcdist, a multicast push of a template's granules to every clone host of a
# ticket (see mcast/mcast.h and mcast/README.md).
#   $(MCAST_OBJS)  the library the memserver (sender) and the memtaps (receivers) link, with
#                  memory/crc32c.c and $(MCAST_LIBS) (libcrypto: HMAC-SHA256 on SHA-NI)
#   mcgeom         benchmark/test aid: an image's page map and checksums, a working set
#   mcpush         benchmark/test driver, the sending side: ours, NORM (libnorm) or TCP unicast
#   mcrecv         benchmark/test driver, a receiving host
# Dynamic (they run on hosts); libcrypto through pkg-config; NORM is Debian's static libnorm (C++).
MCAST_CFLAGS := $(shell pkg-config --cflags libcrypto)
MCAST_LIBS := $(shell pkg-config --libs libcrypto)
NORM_LIBS := -lnorm -lprotokit -lstdc++ -lpthread
MCAST_HDRS := $(wildcard mcast/*.h) memory/crc32c.h
MCAST_OBJS := $(BUILD)/obj/mcast/packet.o $(BUILD)/obj/mcast/common.o $(BUILD)/obj/mcast/sender.o $(BUILD)/obj/mcast/receiver.o
MCAST_CRC := $(BUILD)/obj/mcast/crc32c.o
MCAST_BENCH := $(BUILD)/obj/mcast/bench.o $(MCAST_OBJS) $(MCAST_CRC) $(COMMON_OBJS)

$(BUILD)/obj/mcast/%.o: mcast/%.c $(COMMON_HDRS) $(MCAST_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(MCAST_CFLAGS) -c -o $@ $<

# Debian's normApi.h declares two functions C cannot parse (a reference parameter, a default
# argument); we call neither, so norm.c includes a copy with those two declarations in C.
NORM_H := $(BUILD)/obj/mcast/norm-c/normApi.h
$(NORM_H): /usr/include/normApi.h
	@mkdir -p $(dir $@)
	sed -e 's/unsigned int& addrLen, UINT16& port/unsigned int* addrLen, UINT16* port/' -e 's/unsigned int bytesWanted = 0)/unsigned int bytesWanted)/' $< > $@

$(BUILD)/obj/mcast/norm.o: mcast/norm.c $(NORM_H) $(COMMON_HDRS) $(MCAST_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(MCAST_CFLAGS) -Wno-attributes -I$(dir $(NORM_H)) -c -o $@ $<

# The memory core's CRC32C, built here too so that this module stands on its own.
$(MCAST_CRC): memory/crc32c.c memory/crc32c.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

PROGRAMS += $(BUILD)/mcgeom $(BUILD)/mcpush $(BUILD)/mcrecv

$(BUILD)/mcgeom: $(BUILD)/obj/mcast/mcgeom.o $(MCAST_BENCH)
	$(CC) $(CFLAGS) -o $@ $^ $(LDFLAGS) $(MCAST_LIBS)

$(BUILD)/mcpush: $(BUILD)/obj/mcast/mcpush.o $(BUILD)/obj/mcast/norm.o $(BUILD)/obj/mcast/tcp.o $(MCAST_BENCH)
	$(CC) $(CFLAGS) -pthread -o $@ $^ $(LDFLAGS) $(MCAST_LIBS) $(NORM_LIBS)

$(BUILD)/mcrecv: $(BUILD)/obj/mcast/mcrecv.o $(BUILD)/obj/mcast/norm.o $(BUILD)/obj/mcast/tcp.o $(MCAST_BENCH)
	$(CC) $(CFLAGS) -pthread -o $@ $^ $(LDFLAGS) $(MCAST_LIBS) $(NORM_LIBS)
