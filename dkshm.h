/* dkshm.h — the umbrella header: everything a dkshm user needs.
 *
 *   #include <dkshm/dkshm.h>     (cc $(pkg-config --cflags --libs dkshm))
 */
#ifndef DKSHM_H
#define DKSHM_H

#include "dkshmCommon.h"
#include "segment.h"
#include "fastmutex.h"
#include "membound.h"
#include "OSRegulate.h"
#include "multidict.h"
#include "databox.h"
#include "multimap.h"
#include "multilist.h"
#include "multiarray.h"

#endif
