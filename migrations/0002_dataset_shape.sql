-- 0002_dataset_shape: the image shape of a dataset's rows, (channels,
-- height, width) with channels*height*width = dim, from the uploaded file
-- (IDX and .npy with 3 or 4 dimensions) or declared on upload (?shape=C,H,W).
-- All three NULL when unknown (CSV, JSON rows, flat arrays); rows stored
-- before this migration get NULL.

ALTER TABLE datasets ADD COLUMN shape_c INTEGER CHECK (shape_c IS NULL OR shape_c >= 1);
ALTER TABLE datasets ADD COLUMN shape_h INTEGER CHECK (shape_h IS NULL OR shape_h >= 1);
ALTER TABLE datasets ADD COLUMN shape_w INTEGER CHECK (shape_w IS NULL OR shape_w >= 1);
