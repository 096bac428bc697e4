/* errors.c — the one table of dkshm return codes, its names and messages.
 *
 * Both dkshmStrerror() and dkshmErrName() come from DKSHM_ERRORS in
 * dkshmCommon.h, so a code can never have a name without a message.
 */
#include "dkshmCommon.h"

#define DK_STR2(x) #x
#define DK_STR(x) DK_STR2(x)

DKSHM_API const char *dkshmStrerror(int code) {
    switch (code) {
    case DKSHM_OK:
        return "success";
    case DKSHM_RECOVERED:
        return "lock recovered from a dead owner";
#define DK_X_MSG(name, value, msg)                                             \
    case DKSHM_##name:                                                         \
        return msg;
        DKSHM_ERRORS(DK_X_MSG)
#undef DK_X_MSG
    default:
        return "unknown error";
    }
}

DKSHM_API const char *dkshmErrName(int code) {
    switch (code) {
    case DKSHM_OK:
        return "OK";
    case DKSHM_RECOVERED:
        return "RECOVERED";
#define DK_X_NAME(name, value, msg)                                            \
    case DKSHM_##name:                                                         \
        return #name;
        DKSHM_ERRORS(DK_X_NAME)
#undef DK_X_NAME
    default:
        return "UNKNOWN";
    }
}

DKSHM_API const char *dkshmVersion(void) {
    return DK_STR(DKSHM_VERSION_MAJOR) "." DK_STR(
        DKSHM_VERSION_MINOR) "." DK_STR(DKSHM_VERSION_PATCH);
}
