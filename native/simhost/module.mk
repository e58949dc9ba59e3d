# simhost: the holder of one simulated host's namespaces (src/hosts/simulated.ts starts one per host).
# Static like the other namespace helpers: it links nothing but libc.
PROGRAMS += $(BUILD)/simhost

$(BUILD)/simhost: $(BUILD)/obj/simhost/simhost.o $(COMMON_OBJS)
	$(CC) $(CFLAGS) -o $@ $^ $(LDFLAGS) $(STATIC)
