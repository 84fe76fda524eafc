/*
 * nfq_version.c: the core's version. The Makefile defines NFQ_VERSION from
 * the file VERSION, the one place it is written.
 */
#include "nfq_core.h"

const char *nfq_version(void)
{
	return NFQ_VERSION;
}
