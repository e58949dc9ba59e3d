# The agent protocol's C codec as a filter for the cross-language codec test (host-only: never in
# a guest image). The agent itself links $(PROTO_OBJS) too (see the Makefile).
PROGRAMS += $(BUILD)/proto-codec

$(BUILD)/proto-codec: $(BUILD)/obj/proto/codec.o $(PROTO_OBJS) $(COMMON_OBJS)
	$(CC) $(CFLAGS) -o $@ $^ $(LDFLAGS)
