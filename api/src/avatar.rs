//! Avatar processing: a `data:` URL in, a 150-px-wide PNG out. Decoding is bounded four
//! ways so hostile images cannot exhaust memory: the data URL length, the pixel
//! dimensions read from the header before any pixel is decoded, the decoder's own
//! allocation limit, and [`DecodeGate`], which caps how many decodes run at once (a tiny
//! PNG of 4096x4096 still needs a 64 MiB pixel buffer while it is processed).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use std::io::Cursor;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use image::imageops::FilterType;
use image::{ImageFormat, ImageReader, Limits};

pub const AVATAR_WIDTH: u32 = 150;
/// Taller images are cropped (centred) to at most 1:3 before resizing.
const MAX_ASPECT: u32 = 3;

/// A bounded number of decoding slots; callers wait up to a bound for one.
#[derive(Debug)]
pub struct DecodeGate {
    permits: Arc<Semaphore>,
    size: usize,
    wait: Duration,
    /// Most slots ever in use at once (observability, and tests).
    peak: AtomicUsize,
}

/// A decoding slot; held until the decode ends (move it into the blocking task, so a
/// client that hangs up does not free the slot of a decode still running).
#[derive(Debug)]
pub struct DecodeSlot(#[allow(dead_code)] OwnedSemaphorePermit);

/// No slot came free within the wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("every avatar decoding slot is busy")]
pub struct GateBusy;

impl DecodeGate {
    /// `concurrency` slots, or one per CPU core when 0.
    pub fn new(concurrency: usize, wait: Duration) -> Self {
        let size = if concurrency == 0 {
            std::thread::available_parallelism().map_or(2, usize::from)
        } else {
            concurrency
        };
        Self {
            permits: Arc::new(Semaphore::new(size)),
            size,
            wait,
            peak: AtomicUsize::new(0),
        }
    }

    /// Waits up to the configured bound for a slot.
    pub async fn acquire(&self) -> Result<DecodeSlot, GateBusy> {
        let permit = tokio::time::timeout(self.wait, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| GateBusy)?
            .map_err(|_| GateBusy)?;
        self.peak.fetch_max(self.in_use(), Ordering::Relaxed);
        Ok(DecodeSlot(permit))
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Slots taken right now.
    pub fn in_use(&self) -> usize {
        self.size.saturating_sub(self.permits.available_permits())
    }

    /// Most slots taken at once since start.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AvatarError {
    #[error("avatar must be a base64 data URL (data:image/png;base64,...)")]
    NotDataUrl,
    #[error("avatar must be a PNG, JPEG, WebP or GIF image")]
    UnsupportedType,
    #[error("avatar is too large")]
    TooLarge,
    #[error("avatar is {width}x{height} pixels; the maximum is {max}x{max}")]
    TooManyPixels { width: u32, height: u32, max: u32 },
    #[error("avatar could not be decoded")]
    Undecodable,
    #[error("avatar could not be encoded: {0}")]
    Encode(String),
}

/// Decodes, bounds-checks, resizes and re-encodes an avatar. CPU-heavy: call it on a
/// blocking thread.
pub fn process_avatar(
    data_url: &str,
    max_encoded_len: usize,
    max_dimension: u32,
) -> Result<Vec<u8>, AvatarError> {
    if data_url.len() > max_encoded_len {
        return Err(AvatarError::TooLarge);
    }
    let rest = data_url
        .strip_prefix("data:")
        .ok_or(AvatarError::NotDataUrl)?;
    let (header, payload) = rest.split_once(',').ok_or(AvatarError::NotDataUrl)?;
    let (mime, encoding) = header.split_once(';').ok_or(AvatarError::NotDataUrl)?;
    if !encoding.eq_ignore_ascii_case("base64") {
        return Err(AvatarError::NotDataUrl);
    }
    if !matches!(
        mime.to_ascii_lowercase().as_str(),
        "image/png" | "image/jpeg" | "image/jpg" | "image/webp" | "image/gif"
    ) {
        return Err(AvatarError::UnsupportedType);
    }
    let bytes = STANDARD
        .decode(payload.trim())
        .map_err(|_| AvatarError::NotDataUrl)?;

    // The declared MIME type is not trusted: the format comes from the bytes.
    let format = image::guess_format(&bytes).map_err(|_| AvatarError::UnsupportedType)?;
    if !matches!(
        format,
        ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP | ImageFormat::Gif
    ) {
        return Err(AvatarError::UnsupportedType);
    }

    // Header only: refuse huge dimensions before allocating a pixel buffer.
    let (width, height) = ImageReader::with_format(Cursor::new(&bytes), format)
        .into_dimensions()
        .map_err(|_| AvatarError::Undecodable)?;
    if width == 0 || height == 0 || width > max_dimension || height > max_dimension {
        return Err(AvatarError::TooManyPixels {
            width,
            height,
            max: max_dimension,
        });
    }

    let mut limits = Limits::default();
    limits.max_image_width = Some(max_dimension);
    limits.max_image_height = Some(max_dimension);
    // RGBA8 of the largest allowed image, plus decoder slack.
    limits.max_alloc = Some(u64::from(max_dimension) * u64::from(max_dimension) * 4 + (8 << 20));
    let mut reader = ImageReader::with_format(Cursor::new(&bytes), format);
    reader.limits(limits);
    let img = reader.decode().map_err(|_| AvatarError::Undecodable)?;

    let img = if img.height() > img.width() * MAX_ASPECT {
        let h = img.width() * MAX_ASPECT;
        img.crop_imm(0, (img.height() - h) / 2, img.width(), h)
    } else {
        img
    };
    let out_h = ((u64::from(img.height()) * u64::from(AVATAR_WIDTH)) / u64::from(img.width()))
        .clamp(1, u64::from(AVATAR_WIDTH * MAX_ASPECT)) as u32;
    let resized = img
        .resize_exact(AVATAR_WIDTH, out_h, FilterType::Triangle)
        .to_rgba8();
    let mut out = Cursor::new(Vec::new());
    resized
        .write_to(&mut out, ImageFormat::Png)
        .map_err(|e| AvatarError::Encode(e.to_string()))?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_data_url(w: u32, h: u32) -> String {
        let img = image::RgbaImage::from_pixel(w, h, image::Rgba([200, 10, 10, 255]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png)
            .expect("encode test png");
        format!(
            "data:image/png;base64,{}",
            STANDARD.encode(out.into_inner())
        )
    }

    #[test]
    fn avatar_is_resized_to_150_wide_png() {
        let png = process_avatar(&png_data_url(300, 200), 1 << 20, 4096).expect("valid avatar");
        let img = image::load_from_memory(&png).expect("output decodes");
        assert_eq!((img.width(), img.height()), (150, 100));
        assert_eq!(image::guess_format(&png).ok(), Some(ImageFormat::Png));
    }

    #[test]
    fn very_tall_avatar_is_cropped_to_one_by_three() {
        let png = process_avatar(&png_data_url(10, 1000), 1 << 20, 4096).expect("valid avatar");
        let img = image::load_from_memory(&png).expect("output decodes");
        assert_eq!((img.width(), img.height()), (150, 450));
    }

    #[test]
    fn non_data_urls_and_wrong_types_are_refused() {
        assert_eq!(
            process_avatar("http://x/y.png", 1 << 20, 4096),
            Err(AvatarError::NotDataUrl)
        );
        assert_eq!(
            process_avatar("data:text/html;base64,PGI+", 1 << 20, 4096),
            Err(AvatarError::UnsupportedType)
        );
        // Declared PNG, but the bytes are HTML.
        let html = format!("data:image/png;base64,{}", STANDARD.encode("<html></html>"));
        assert_eq!(
            process_avatar(&html, 1 << 20, 4096),
            Err(AvatarError::UnsupportedType)
        );
        assert_eq!(
            process_avatar(&png_data_url(4, 4), 10, 4096),
            Err(AvatarError::TooLarge)
        );
    }
}
