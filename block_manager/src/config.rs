//! How a block manager is sized, and what it does: pages, swap pool, watermark, prefix caching.

use crate::error::BlockError;

/// How the block manager is sized and what it does.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockManagerConfig {
    /// Token slots per page: a power of two in 1..=256.
    pub block_size: usize,
    /// Pages in the device (GPU or CPU-engine) KV cache.
    pub num_device_blocks: usize,
    /// Pages in the host swap pool (0 disables swapping).
    pub num_host_blocks: usize,
    /// Fraction of device pages kept free when admitting new sequences (or swapping sequences
    /// back in), so that running sequences can still grow by a page without preemption.
    pub watermark: f64,
    /// Whether full pages are hashed and reused across sequences.
    pub enable_prefix_caching: bool,
}

impl BlockManagerConfig {
    /// A device-only cache with prefix caching on and a 1 % watermark (vLLM's defaults).
    pub fn new(block_size: usize, num_device_blocks: usize) -> Self {
        BlockManagerConfig {
            block_size,
            num_device_blocks,
            num_host_blocks: 0,
            watermark: 0.01,
            enable_prefix_caching: true,
        }
    }

    pub fn with_host_blocks(mut self, n: usize) -> Self {
        self.num_host_blocks = n;
        self
    }

    pub fn with_watermark(mut self, w: f64) -> Self {
        self.watermark = w;
        self
    }

    pub fn with_prefix_caching(mut self, on: bool) -> Self {
        self.enable_prefix_caching = on;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), BlockError> {
        if !(1..=256).contains(&self.block_size) || !self.block_size.is_power_of_two() {
            return Err(BlockError::InvalidConfig(format!(
                "block_size must be a power of two in 1..=256, got {}",
                self.block_size
            )));
        }
        if !(0.0..1.0).contains(&self.watermark) {
            return Err(BlockError::InvalidConfig(format!(
                "watermark must be in [0, 1), got {}",
                self.watermark
            )));
        }
        Ok(())
    }
}
