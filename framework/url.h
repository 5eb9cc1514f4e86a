/* Internal: URLs and how they are shown without their secrets. */
#ifndef CW_FRAMEWORK_URL_H
#define CW_FRAMEWORK_URL_H

/* Copies `url` into `out` with any password replaced by "***". */
void cw__url_mask(const char *url, char *out, unsigned long out_len);

#endif
