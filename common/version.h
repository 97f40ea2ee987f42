/* version.h: the release of flowd, flowctl and the Python client
 * (client/python/flowd_client.py says the same in __version__). */
#ifndef FLOWD_VERSION_H
#define FLOWD_VERSION_H

#define FLOWD_VERSION "0.1.0"

#endif
