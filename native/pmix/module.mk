# sf-pmix: the PMIx server the launcher drives (protocol.h). It runs on the host, so it links
# Debian's libpmix dynamically (pkg-config pmix), not statically like the guest-side programs.
PMIX_CFLAGS := $(shell pkg-config --cflags pmix 2>/dev/null)
PMIX_LIBS := $(shell pkg-config --libs pmix 2>/dev/null) -lpthread
PMIX_SRCS := $(wildcard pmix/*.c)
PMIX_HDRS := $(wildcard pmix/*.h)
PMIX_OBJS := $(patsubst %.c,$(BUILD)/obj/%.o,$(PMIX_SRCS))

$(PMIX_OBJS): CFLAGS += $(PMIX_CFLAGS)
$(PMIX_OBJS): $(PMIX_HDRS) | pmix-check

pmix-check:
	@pkg-config --exists pmix || { echo "native/pmix: libpmix-dev is missing (pkg-config pmix): run .ci/setup or apt-get install libpmix-dev" >&2; exit 1; }

$(BUILD)/sf-pmix: $(PMIX_OBJS) $(COMMON_OBJS)
	$(CC) $(CFLAGS) -o $@ $^ $(LDFLAGS) $(PMIX_LIBS)

PROGRAMS += $(BUILD)/sf-pmix

.PHONY: pmix-check
