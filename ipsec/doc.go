// Package ipsec holds IPsec security associations (SAs) and security
// policies as plain values: the policy store produces them in its bundles,
// the agent's netlink codec (agent/xfrm) installs and reads them back, and
// the loader and the update daemon compare them. It has no kernel
// dependency and no knowledge of the store, so every layer can use it.
//
// The numbering follows the kernel's (XFRM_POLICY_IN is 0, XFRM_MODE_TUNNEL
// is 1, IPPROTO_ESP is 50); JSON writes the names ip-xfrm(8) uses ("out",
// "tunnel", "esp"). Validate checks what can be checked before the kernel
// sees a value; the policy store's stricter rules (ESP only, AES-GCM only,
// an MLS context whose level is the label's) are its own.
package ipsec
